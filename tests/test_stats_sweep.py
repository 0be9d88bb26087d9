"""Statistics: CIs, paired tests and Holm against scipy and hand-computed values; crossover; verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from sparsecl.stats.analysis import Run, comparison_rows, crossover_rows, density_curve, groups, verdicts
from sparsecl.stats.crossover import bootstrap_crossover, crossover_phase
from sparsecl.stats.intervals import bootstrap_ci, t_interval
from sparsecl.stats.tests import holm, paired_tests

A = [0.52, 0.61, 0.48, 0.70, 0.66, 0.58]
B = [0.41, 0.55, 0.47, 0.52, 0.60, 0.49]


def test_t_interval_matches_scipy() -> None:
    m, lo, hi = t_interval(A)
    ref = st.t.interval(0.95, len(A) - 1, loc=np.mean(A), scale=st.sem(A))
    assert m == pytest.approx(np.mean(A)) and (lo, hi) == pytest.approx(ref, rel=1e-12)
    # hand check: mean 0.591667, sd 0.083047, t_{0.975,5} = 2.570582
    assert hi - m == pytest.approx(2.570582 * 0.0830462 / math.sqrt(6), rel=1e-5)


def test_bootstrap_ci_matches_scipy_and_brackets_the_mean() -> None:
    m, lo, hi = bootstrap_ci(A, n_resamples=5000, seed=3)
    ref = st.bootstrap((np.array(A),), np.mean, n_resamples=5000, method="percentile",
                       random_state=np.random.default_rng(3)).confidence_interval
    assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert lo < m < hi and min(A) < lo and hi < max(A)
    assert bootstrap_ci([1.0, 1.0, 1.0])[1:] == (1.0, 1.0)
    assert math.isnan(bootstrap_ci([2.0])[1])


def test_paired_tests_match_scipy() -> None:
    r = paired_tests(A, B)
    t = st.ttest_rel(A, B)
    w = st.wilcoxon(A, B)
    assert r.n == 6 and r.mean_diff == pytest.approx(np.mean(np.subtract(A, B)))
    assert (r.t, r.p_t) == pytest.approx((t.statistic, t.pvalue), rel=1e-12)
    assert (r.w, r.p_wilcoxon) == pytest.approx((w.statistic, w.pvalue), rel=1e-12)
    # hand check: differences .11 .06 .01 .18 .06 .09 -> mean .085, sd sqrt(.01655/5) = .0575326, t = 3.6189
    assert r.t == pytest.approx(0.085 / (math.sqrt(0.01655 / 5) / math.sqrt(6)), rel=1e-9)
    # all six differences positive: exact two-sided Wilcoxon p = 2 / 2^6
    assert r.p_wilcoxon == pytest.approx(2 / 64)
    lo, hi = st.t.interval(0.95, 5, loc=r.mean_diff, scale=st.sem(np.subtract(A, B)))
    assert (r.ci_low, r.ci_high) == pytest.approx((lo, hi))
    assert math.isnan(paired_tests([1.0], [2.0]).p_t)


def test_holm_known_values() -> None:
    # m = 4: sorted p .01 .02 .03 .04 -> 4*.01=.04, 3*.02=.06, 2*.03=.06, 1*.04=.04 -> monotone .04 .06 .06 .06
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = holm([0.01, math.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)


def test_crossover_phase_definition() -> None:
    d = [None, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert crossover_phase([None, 1.2, 1.1, 0.9, 0.8, 0.7], d) == 3
    assert crossover_phase([None, 1.2, 0.9, 1.05, 0.8, 0.7], d) == 4  # must stay below from p on
    assert crossover_phase([None, 0.9, 0.9, 0.9, 0.9, 0.9], d) == 1
    assert crossover_phase([None, 0.9, 0.9, 0.9, 0.9, 1.1], d) is None  # worse at the end: none
    assert crossover_phase([None, 1.0, 1.0], [None, 1.0, 1.0]) is None  # ties are not "below"


def test_bootstrap_crossover_ci() -> None:
    rng = np.random.default_rng(0)
    base_s = np.array([np.nan, 1.3, 1.2, 1.1, 0.9, 0.8, 0.7])
    base_d = np.array([np.nan, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    S = [list(base_s + rng.normal(0, 0.01, 7)) for _ in range(5)]
    D = [list(base_d + rng.normal(0, 0.01, 7)) for _ in range(5)]
    res = bootstrap_crossover(S, D, n_resamples=500)
    assert res.phase == 4 and res.ci_low == 4 and res.ci_high == 4 and res.frac_crossed == 1.0
    assert res.starts_worse and res.text() == "4 [4, 4]"
    never = bootstrap_crossover([list(base_d + 0.5)] * 3, D[:3], n_resamples=200)
    assert never.phase is None and never.text() == "none" and never.frac_crossed == 0.0


def _run(name: str, seed: int, density: float, forgetting: float, topology: str = "er",
         curve: list | None = None) -> Run:
    cfg = {"name": f"{name}-s{seed}", "group": name, "seed": seed, "threads": 1,
           "sparse": {"density": density, "topology": topology}, "method": {"name": "naive"},
           "train": {"lr": 0.001}}
    summary = {"group": name, "avg_forgetting": forgetting, "bwt": -forgetting, "fwt": 0.0,
               "final_avg_loss": 1.0, "avg_seen_loss_by_phase": curve or [None, 1.0, 1.0, 1.0]}
    return Run(f"{name}-s{seed}", cfg, summary)


def test_verdicts_pair_by_seed_and_compare_like_with_like() -> None:
    runs = []
    for s, (fd, fs, fb) in enumerate([(0.50, 0.20, 0.21), (0.55, 0.22, 0.30), (0.48, 0.19, 0.25),
                                      (0.52, 0.21, 0.24), (0.60, 0.25, 0.33), (0.47, 0.18, 0.20)]):
        runs.append(_run("dense", s, 1.0, fd, curve=[None, 1.0, 1.0, 1.0]))
        runs.append(_run("er05", s, 0.05, fs, curve=[None, 1.2, 0.9, 0.8]))
        runs.append(_run("brf05", s, 0.05, fb, topology="brf", curve=[None, 1.1, 1.05, 0.9]))
    gs = groups(runs)
    comps = comparison_rows(gs)
    h1 = [c for c in comps if c["hypothesis"] == "H1"]
    assert {c["comparison"] for c in h1} == {"dense - er05", "dense - brf05"}
    c = next(c for c in h1 if c["comparison"] == "dense - er05")
    ref = st.ttest_rel([r.summary.avg_forgetting for r in runs if r.run_id.startswith("dense")],
                       [r.summary.avg_forgetting for r in runs if r.run_id.startswith("er05")])
    assert c["p_t"] == pytest.approx(ref.pvalue) and c["effect"] > 0 and c["n"] == 6
    assert c["p_t_holm"] == pytest.approx(holm([x["p_t"] for x in h1])[h1.index(c)])
    assert c["verdict"] == "supported"
    h3 = [c for c in comps if c["hypothesis"] == "H3"]
    assert [c["comparison"] for c in h3] == ["er05 - brf05"]  # equal density, different topology
    cross = {c["sparse"]: c for c in crossover_rows(gs)}
    assert cross["er05"]["crossover"] == 2 and cross["brf05"]["crossover"] == 3
    v = {r["hypothesis"]: r for r in verdicts(gs)}
    assert v["H1"]["verdict"] == "Holm family of 2: 2 supported, 0 contradicted, 0 inconclusive"
    assert v["H1"]["n"] == 6
    assert v["H2"]["verdict"] == "vs same shape dense: 2/2 pairs cross with a finite CI"
    assert v["H3"]["n"] == 6 and v["H3"]["p"] is not None
    curve = density_curve(gs)
    assert [p["density"] for p in curve["naive / er"]] == [0.05, 1.0]


def test_different_contexts_are_not_compared() -> None:
    runs = [_run("dense", s, 1.0, 0.5) for s in range(3)]
    other = [_run("er", s, 0.1, 0.2) for s in range(3)]
    for r in other:
        r.config["train"] = {"lr": 0.01}  # another learning rate: not a controlled comparison
    assert comparison_rows(groups(runs + other)) == []
    assert verdicts(groups(runs + other))[0]["verdict"].startswith("not testable")
