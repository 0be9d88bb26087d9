"""Statistics over seeds: confidence intervals and (paired) tests between arms."""

from sparsecl.stats.intervals import mean_ci

__all__ = ["mean_ci"]
