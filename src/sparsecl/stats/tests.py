"""Paired tests between two arms over seeds, and Holm's correction over a family of comparisons."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as st


@dataclass
class Paired:
    """A paired comparison a - b over n seeds: mean difference with its t interval and both tests' p."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    t: float
    p_t: float
    w: float
    p_wilcoxon: float
    sd: float = math.nan
    """Standard deviation of the differences (ddof 1); 0 means every difference is the same."""

    @property
    def no_variance(self) -> bool:
        """All n >= 2 differences identical: no test statistic exists, so neither test gives a p-value."""
        return self.n >= 2 and self.sd == 0.0


def paired_tests(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Paired:
    """Paired t-test and Wilcoxon signed-rank test (two-sided) on a[k] - b[k]; NaN where n is too small.

    Identical differences (sd = 0, up to float rounding) have no p-value from either test: t would be +-inf
    and p = 0, which would read as certainty from a degenerate input (e.g. a metric that ignores the arm).

    Wilcoxon uses scipy's default: the exact null distribution for small n without ties, zero differences
    dropped ('wilcox'). With n = 3 seeds its smallest two-sided p is 0.25, so it can never be significant:
    that is the honest answer for 3 seeds, not a bug.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples need equal length, got {x.size} and {y.size}")
    d = x - y
    n = int(d.size)
    nan = math.nan
    if n == 0:
        return Paired(0, nan, nan, nan, nan, nan, nan, nan)
    md = float(d.mean())
    if n < 2:
        return Paired(n, md, nan, nan, nan, nan, nan, nan)
    sd = float(d.std(ddof=1))
    if float(np.ptp(d)) <= 1e-12 * max(1.0, float(np.abs(d).max())):  # identical up to float rounding
        return Paired(n, md, md, md, nan, nan, nan, nan, 0.0)
    res = st.ttest_rel(x, y)
    t_stat, p_t = float(res.statistic), float(res.pvalue)
    h = float(st.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n))
    wres = st.wilcoxon(x, y)
    return Paired(n, md, md - h, md + h, t_stat, p_t, float(wres.statistic), float(wres.pvalue), sd)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaN entries stay NaN and are
    not counted in the family size."""
    p = [float(v) for v in pvalues]
    idx = [i for i, v in enumerate(p) if not math.isnan(v)]
    m = len(idx)
    out = [math.nan] * len(p)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda k: p[k])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out
