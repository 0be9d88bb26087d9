"""Crossover phase between a sparse arm S and a dense arm D (DESIGN §5).

The crossover phase is the first phase p >= 1 such that A_S(j) < A_D(j) for every j >= p, where A is the
average seen-domain loss after phase j (``avg_seen_loss_by_phase`` in summary.json). Over seeds it is
computed on the mean curves; its confidence interval comes from a bootstrap over seeds (paired by seed
when both arms share their seeds). "none" is a valid answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def crossover_phase(a_s: Sequence[float | None], a_d: Sequence[float | None]) -> int | None:
    """First phase p >= 1 with a_s[j] < a_d[j] for all j >= p, or None (index 0 is the init row)."""
    T = min(len(a_s), len(a_d)) - 1
    p = None
    for j in range(T, 0, -1):
        s, d = a_s[j], a_d[j]
        if s is None or d is None or not s < d:
            break
        p = j
    return p


@dataclass
class Crossover:
    n: int
    phase: int | None
    """Crossover phase of the mean curves, or None."""
    ci_low: float
    ci_high: float
    """Percentile bootstrap bounds; math.inf stands for 'no crossover within the schedule'."""
    frac_crossed: float
    """Fraction of bootstrap resamples that cross at all."""
    starts_worse: bool
    """S's average seen loss after phase 1 is above D's (the H2 premise)."""

    def text(self) -> str:
        if self.phase is None:
            return "none"
        fmt = lambda v: "none" if math.isinf(v) else str(int(v))  # noqa: E731
        if math.isnan(self.ci_low):
            return f"{self.phase}"
        return f"{self.phase} [{fmt(self.ci_low)}, {fmt(self.ci_high)}]"


def bootstrap_crossover(curves_s: Sequence[Sequence[float]], curves_d: Sequence[Sequence[float]],
                        paired: bool = True, n_resamples: int = 2000, level: float = 0.95,
                        seed: int = 0) -> Crossover:
    """Crossover of the seed-mean curves plus a percentile bootstrap CI over seeds.

    ``curves_s[k]`` is A_S for seed k (phases 0..T, index 0 may be None). With ``paired`` the same seed
    indices are drawn for both arms (their curves share data order and init seeds); otherwise each arm is
    resampled on its own. Resamples with no crossover count as +inf, so the upper bound reads "none" when
    more than (1 - level)/2 of them never cross.
    """
    S = np.array([[np.nan if v is None else v for v in c] for c in curves_s], dtype=float)
    D = np.array([[np.nan if v is None else v for v in c] for c in curves_d], dtype=float)
    if paired and S.shape[0] != D.shape[0]:
        raise ValueError("paired bootstrap needs the same number of seeds in both arms")
    to_list = lambda x: [None if np.isnan(v) else float(v) for v in x]  # noqa: E731
    point = crossover_phase(to_list(S.mean(0)), to_list(D.mean(0)))
    starts_worse = bool(S.shape[1] > 1 and S[:, 1].mean() > D[:, 1].mean())
    n = S.shape[0]
    if n < 2 or D.shape[0] < 2:
        return Crossover(n, point, math.nan, math.nan, math.nan, starts_worse)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_resamples):
        i = rng.integers(0, n, n)
        k = i if paired else rng.integers(0, D.shape[0], D.shape[0])
        p = crossover_phase(to_list(S[i].mean(0)), to_list(D[k].mean(0)))
        draws.append(math.inf if p is None else float(p))
    arr = np.array(draws)
    alpha = (1 - level) / 2
    lo, hi = (float(np.quantile(arr, q, method="inverted_cdf")) for q in (alpha, 1 - alpha))
    return Crossover(n, point, lo, hi, float(np.mean(np.isfinite(arr))), starts_worse)
