"""Verdict rules (DESIGN §10) on hand-made arms: too few seeds, zero variance, H2's finite-CI rule, pairing by
realised density, the Holm family headline, and the confounds each hypothesis opens with."""

from __future__ import annotations

import math

import pytest
from scipy import stats as st

from sparsecl.stats.analysis import Run, comparison_rows, crossover_rows, groups, verdicts
from sparsecl.stats.confounds import confounds
from sparsecl.stats.tests import holm, paired_tests

DENSE = [0.50, 0.55, 0.48, 0.52, 0.60, 0.47]
FLAT = [None, 1.0, 1.0, 1.0, 1.0, 1.0]


def run(arm: str, seed: int, density: float, forgetting: float, topology: str = "er", curve: list | None = None,
        realised: float | None = None, **extra: object) -> Run:
    """One run of arm ``arm``; ``realised`` is the summary's realised masked density (default: the configured)."""
    cfg = {"name": f"{arm}-s{seed}", "group": arm, "seed": seed, "sparse": {"density": density, "topology": topology},
           "method": {"name": "naive"}, "model": {"d_model": 64}, "train": {"lr": 0.001}}
    summary = {"group": arm, "avg_forgetting": forgetting, "bwt": -forgetting, "fwt": 0.0, "final_avg_loss": 1.0,
               "avg_seen_loss_by_phase": curve or FLAT, "density": density if realised is None else realised,
               "params_total": 1000, "params_nonzero": round(1000 * density), **extra}
    return Run(f"{arm}-s{seed}", cfg, summary)


def arms(n: int, sparse: list[float], **kw: object) -> list[Run]:
    return ([run("dense", s, 1.0, DENSE[s]) for s in range(n)]
            + [run("er", s, 0.1, sparse[s], **kw) for s in range(n)])


def by_hyp(runs: list[Run]) -> dict[str, dict]:
    return {v["hypothesis"]: v for v in verdicts(groups(runs))}


@pytest.mark.parametrize("n", [1, 2])
def test_fewer_than_three_seeds_are_not_testable(n: int) -> None:
    sparse = [0.20, 0.22, 0.19]
    curves = [[None, 1.2, 0.9, 0.8, 0.7, 0.6]] * 3
    runs = arms(n, sparse)
    for r in runs:
        if r.config["sparse"]["density"] < 1:
            r.summary.avg_seen_loss_by_phase = curves[0]
    [row] = [c for c in comparison_rows(groups(runs)) if c["hypothesis"] == "H1"]
    assert row["verdict"] == f"not testable (n = {n})" and row["status"] == "not testable"
    assert math.isnan(row["p_t"]) and math.isnan(row["p_t_holm"]) and math.isnan(row["p_wilcoxon_holm"])
    v = by_hyp(runs)
    assert v["H1"]["verdict"] == f"not testable (n = {n})" and v["H1"]["p"] is None and v["H1"]["effect"] is None
    assert v["H2"]["verdict"] == f"not testable (n = {n})"
    [h2] = crossover_rows(groups(runs))
    assert h2["crossover"] == 2 and h2["status"] == "not testable"  # the curves cross, but n is too small to say


def test_three_seeds_are_tested_and_the_headline_gives_the_family() -> None:
    sparse = [0.20, 0.22, 0.19]
    v = by_hyp(arms(3, sparse))
    # differences .30 .33 .29: mean .306667, sd .0208167, t = 25.515 with 2 df
    ref = st.ttest_rel(DENSE[:3], sparse)
    assert ref.statistic == pytest.approx(0.306667 / (0.0208167 / math.sqrt(3)), rel=1e-4)
    assert v["H1"]["p"] == pytest.approx(ref.pvalue)  # Holm over a family of one leaves p unchanged
    assert v["H1"]["verdict"] == "Holm family of 1: 1 supported, 0 contradicted, 0 inconclusive"
    half = 4.302653 * 0.0208167 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n) = 0.051712
    assert v["H1"]["effect"] == (f"median +0.3067 [{0.306667 - half:+.4f}, {0.306667 + half:+.4f}] "
                                 f"(dense - er)") == "median +0.3067 [+0.2550, +0.3584] (dense - er)"
    assert v["H1"]["n"] == 3 and v["H1"]["n_text"] == "3"


def test_identical_differences_have_no_variance_and_no_p_value() -> None:
    r = paired_tests([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])  # every difference is 0.1 (up to float rounding)
    assert r.no_variance and r.sd == 0.0 and r.mean_diff == pytest.approx(0.1)
    assert math.isnan(r.t) and math.isnan(r.p_t) and math.isnan(r.p_wilcoxon)
    assert (r.ci_low, r.ci_high) == pytest.approx((0.1, 0.1))
    runs = arms(3, [d - 0.1 for d in DENSE[:3]])
    runs += [run("er20", s, 0.2, f) for s, f in enumerate([0.20, 0.22, 0.19])]
    rows = {c["b"]: c for c in comparison_rows(groups(runs)) if c["hypothesis"] == "H1"}
    assert rows["er"]["verdict"] == "no variance (3 identical differences)" and math.isnan(rows["er"]["p_t"])
    assert rows["er20"]["p_t_holm"] == pytest.approx(rows["er20"]["p_t"])  # the family holds one test, not two
    assert by_hyp(runs)["H1"]["verdict"] == ("Holm family of 1: 1 supported, 0 contradicted, 0 inconclusive; "
                                             "1 not testable")


def _h2(sparse_curves: list[list]) -> tuple[dict, dict]:
    runs = [run("dense", s, 1.0, 0.5) for s in range(3)]
    runs += [run("er", s, 0.1, 0.2, curve=c) for s, c in enumerate(sparse_curves)]
    [row] = crossover_rows(groups(runs))
    return row, by_hyp(runs)["H2"]


def test_h2_crossover_by_one_seed_of_three_is_not_a_crossover() -> None:
    crosses = [None, 1.2, 1.1, 0.7, 0.6, 0.5]
    stays = [None, 1.2, 1.1, 1.05, 1.02, 1.01]
    row, head = _h2([crosses, stays, stays])
    # mean curve after phase 3: (0.7 + 1.05 + 1.05) / 3 = 0.933 < 1 and below from then on; phase 2: 1.1 > 1
    assert row["crossover"] == 3 and row["starts_worse"]
    # a resample without seed 0 never crosses: probability (2/3)^3 = 29.6%
    assert row["frac_crossed"] == pytest.approx(1 - (2 / 3) ** 3, abs=0.03)
    assert row["ci_low"] == 3 and math.isinf(row["ci_high"]) and row["status"] == "no crossover"
    assert row["verdict"] == (f"no reliable crossover: the mean curves cross at phase 3, but "
                              f"{1 - row['frac_crossed']:.0%} of bootstrap resamples never cross "
                              f"(n = 3, 95% CI [3, none])")
    assert head["verdict"] == "vs same shape dense: 0/1 pairs cross with a finite CI"
    row, head = _h2([crosses] * 3)
    assert row["verdict"] == "crossover at phase 3, 95% CI [3, 3] (n = 3)" and row["reference"] == "same shape"
    assert head["verdict"] == "vs same shape dense: 1/1 pairs cross with a finite CI"


def test_h2_pairs_an_iso_parameter_dense_reference_by_parameter_count() -> None:
    runs = [run("dense", s, 1.0, 0.5) for s in range(3)]
    runs += [run("er", s, 0.1, 0.2, curve=[None, 1.2, 1.1, 0.7, 0.6, 0.5]) for s in range(3)]
    small = [run("dense-iso", s, 1.0, 0.5, params_total=102) for s in range(3)]  # er keeps 100 nonzeros: 2%
    far = [run("dense-tiny", s, 1.0, 0.5, params_total=90) for s in range(3)]  # 10% off: no reference
    for r in small + far:
        r.config["model"] = {"d_model": 16}
    rows = {r["dense"]: r for r in crossover_rows(groups(runs + small + far))}
    assert set(rows) == {"dense", "dense-iso"}
    assert rows["dense"]["reference"] == "same shape" and rows["dense-iso"]["reference"] == "iso-parameter"
    assert rows["dense-iso"]["comparison"] == "er vs dense-iso (iso-parameter dense)"
    head = by_hyp(runs + small + far)["H2"]
    assert head["verdict"] == ("vs same shape dense: 1/1 pairs cross with a finite CI; "
                               "vs iso-parameter dense: 1/1 pairs cross with a finite CI")


def test_h3_pairs_by_realised_density_and_refuses_a_mismatch() -> None:
    er = [0.20, 0.22, 0.19, 0.21]
    runs = [run("er05", s, 0.05, f) for s, f in enumerate(er)]
    runs += [run("brf05", s, 0.05, f + 0.05 + 0.01 * s, topology="brf", realised=0.0502) for s, f in enumerate(er)]
    runs += [run("exp05", s, 0.05, f, topology="expander", realised=0.0469) for s, f in enumerate(er)]
    # configured 4.8% but realised 4.98%: within 1% of er05's 5.00%, so it is compared
    runs += [run("blk", s, 0.048, f + 0.01 * (s % 2), topology="block", realised=0.0498) for s, f in enumerate(er)]
    rows = {c["comparison"]: c for c in comparison_rows(groups(runs)) if c["hypothesis"] == "H3"}
    # brf05 (5.02%) and blk (4.98%) are 0.8% apart: compared too. exp05 is listed (not compared) only against
    # the arms configured at its density; against blk (configured 4.8%) it is no candidate at all
    assert set(rows) == {"er05 - brf05", "er05 - exp05", "er05 - blk", "brf05 - exp05", "brf05 - blk"}
    assert rows["er05 - exp05"]["verdict"] == ("not compared: realised density 5.00% vs 4.69% (6.2% apart, "
                                               "more than 1%)")
    assert rows["brf05 - exp05"]["verdict"].startswith("not compared: realised density 5.02% vs 4.69%")
    assert math.isnan(rows["er05 - exp05"]["p_t"])
    ref = st.ttest_rel(er, [f + 0.05 + 0.01 * s for s, f in enumerate(er)])
    assert rows["er05 - brf05"]["p_t"] == pytest.approx(ref.pvalue)
    tested = ["er05 - brf05", "er05 - blk", "brf05 - blk"]
    assert [rows[k]["p_t_holm"] for k in tested] == pytest.approx(holm([rows[k]["p_t"] for k in tested]))
    gs = groups(runs)
    v = {h["hypothesis"]: h for h in verdicts(gs)}
    assert v["H3"]["counts"]["not testable"] == 2 and v["H3"]["verdict"].startswith("Holm family of 3: ")
    lines = confounds(v["H3"], gs)
    assert "density: exp05 realises 4.69% against 5.00% configured (6.2% fewer connections)" in lines
    assert any(x.startswith("density: 2 pair(s) differ by more than 1% in realised density") for x in lines)


def test_holm_family_headline_counts_supported_contradicted_inconclusive() -> None:
    runs = [run("dense", s, 1.0, DENSE[s]) for s in range(6)]
    wobble = [0.01, -0.02, 0.015, -0.01, 0.02, -0.005]
    runs += [run("lo", s, 0.05, DENSE[s] - 0.3 + wobble[s]) for s in range(6)]  # dense forgot more: supported
    runs += [run("hi", s, 0.2, DENSE[s] + 0.3 + wobble[s]) for s in range(6)]  # dense forgot less: contradicted
    runs += [run("mid", s, 0.1, DENSE[s] + wobble[s]) for s in range(6)]  # no difference: inconclusive
    runs += [run("two", s, 0.3, DENSE[s] - 0.3) for s in range(2)]  # two seeds: not testable
    v = by_hyp(runs)["H1"]
    assert v["verdict"] == "Holm family of 3: 1 supported, 1 contradicted, 1 inconclusive; 1 not testable"
    assert v["counts"] == {"supported": 1, "contradicted": 1, "inconclusive": 1, "not testable": 1}
    mid = next(r for r in v["rows"] if r["b"] == "mid")
    assert mid["effect"] == pytest.approx(-sum(wobble) / 6)
    assert v["effect"] == f"median {mid['effect']:+.4f} [{mid['ci_low']:+.4f}, {mid['ci_high']:+.4f}] (dense - mid)"
    rows = {r["b"]: r["verdict"] for r in v["rows"]}
    assert rows == {"lo": "supported", "hi": "contradicted (dense forgot less)", "mid": "inconclusive",
                    "two": "not testable (n = 2)"}
    assert v["n"] == 2 and v["n_text"] == "2-6"


def test_confounds_name_dead_units_learned_drop_tokens_and_overlap() -> None:
    runs = [run("dense", s, 1.0, DENSE[s], learned_drop={"a": 0.8, "b": 1.0}, avg_normalised_forgetting=0.6)
            for s in range(3)]
    runs += [run("er", s, 0.01, 0.2, dead_unit_fraction=0.3, learned_drop={"a": 0.4, "b": 0.5},
                 avg_normalised_forgetting=0.45, nonzero_split={"embeddings": 5, "masked": 4, "other": 1})
             for s in range(3)]
    gs = groups(runs)
    h1 = by_hyp(runs)["H1"]
    row = h1["rows"][0]
    assert (row["dead_b"], row["nf_a"], row["nf_b"], row["drop_a"], row["drop_b"]) == pytest.approx(
        (0.3, 0.6, 0.45, 0.9, 0.45))
    lines = confounds(h1, gs, {"a": 4096, "b": 512}, {"a": 1.0, "b": 0.02})
    assert lines[0] == ("seeds: n = 3 paired seeds; the exact two-sided Wilcoxon p cannot go below 0.25, so only "
                        "the t test can reach 0.05; bootstrap CIs need n >= 5 and are not shown")
    assert "dead units: er: 30.0% of the masked layers' output units have no input connection" in lines
    assert ("capacity: er (shape matching) keeps 10 of 1,000 parameters (1.0%); embeddings hold 50% of its "
            "nonzeros, masked layers 40%") in lines
    assert ("learned drop: in dense - er, er learned less (mean D 0.450 vs 0.900); absolute forgetting favours it, "
            "compare F/D") in lines
    assert "evaluation: 512 scored tokens per evaluation for b, the fewest of a 4,096, b 512" in lines
    assert [x for x in lines if x.startswith("validation")] == [
        "validation overlaps training: 100% of a's validation lines (20+ characters) also occur in its training "
        "documents, so its loss measures recall of seen text more than generalisation"]
    old = confounds(by_hyp(arms(3, [0.2, 0.22, 0.19]))["H1"], groups(arms(3, [0.2, 0.22, 0.19])))
    assert "dead units: not recorded in these summaries (runs older than dead_unit_fraction)" in old


def test_bootstrap_ci_only_from_five_seeds_and_dense_point_labelled() -> None:
    from sparsecl.stats.analysis import arm_rows, density_curve
    from sparsecl.stats.intervals import bootstrap_ci

    runs = [run("dense", s, 1.0, DENSE[s]) for s in range(5)] + [run("er", s, 0.1, DENSE[s] - 0.3) for s in range(4)]
    iso = [run("dense-iso", s, 1.0, 0.4) for s in range(3)]
    for r in iso:
        r.config["model"] = {"d_model": 16}
    gs = groups(runs + iso)
    rows = {r["arm"]: r for r in arm_rows(gs)}
    five, four = rows["dense"]["avg_forgetting"], rows["er"]["avg_forgetting"]
    assert (five["boot_lo"], five["boot_hi"]) == pytest.approx(bootstrap_ci(DENSE[:5])[1:])
    assert math.isnan(four["boot_lo"]) and math.isnan(four["boot_hi"]) and not math.isnan(four["t_lo"])
    [(name, pts)] = density_curve(gs).items()  # the iso-parameter dense arm has another model: not on the line
    assert name == "naive / er" and [(p["arm"], p["topology"]) for p in pts] == [("er", "er"), ("dense", "dense")]


def test_widened_sparse_arms_are_never_same_shape() -> None:
    from sparsecl.stats.analysis import reference_kind

    dense = groups([run("dense", 0, 1.0, 0.5)])[0]
    for matching, nonzero, kind in (("shape", 100, "same shape"), ("params", 1010, "iso-parameter"),
                                    ("masked_params", 400, "iso-masked-parameter"), ("params", 500, None)):
        s = run("er", 0, 0.1, 0.2, params_nonzero=nonzero)
        s.config["sparse"]["matching"] = matching
        assert reference_kind(dense, groups([s])[0]) == kind, matching
