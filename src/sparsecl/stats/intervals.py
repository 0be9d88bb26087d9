"""Confidence intervals for means over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as st


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (half-width NaN for n < 2)."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    m = float(x.mean())
    if x.size < 2:
        return m, math.nan
    half = float(st.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return m, half


def bootstrap_ci(values: Sequence[float], level: float = 0.95, n_resamples: int = 9999,
                 seed: int = 0) -> tuple[float, float, float]:
    """Mean and a percentile-bootstrap confidence interval (lo, hi) over seeds, via scipy.stats.bootstrap.

    Percentile rather than BCa: with 3-5 seeds the BCa acceleration estimate is unstable or undefined.
    Returns NaN bounds for n < 2.
    """
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if x.size < 2 or np.all(x == x[0]):
        return (m, m, m) if x.size >= 2 else (m, math.nan, math.nan)
    res = st.bootstrap((x,), np.mean, confidence_level=level, n_resamples=n_resamples, method="percentile",
                       random_state=np.random.default_rng(seed))
    return m, float(res.confidence_interval.low), float(res.confidence_interval.high)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the Student-t interval (lo, hi); NaN bounds for n < 2."""
    m, h = mean_ci(values, level)
    return m, m - h, m + h
