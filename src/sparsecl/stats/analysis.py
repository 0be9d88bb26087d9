"""From finished runs to evidence: per-arm means with CIs, the density-forgetting curve, and H1-H3 verdicts.

Inputs are ``Run`` records (config dict + typed summary). Runs are grouped into arms by ``group`` (runs
that differ only in their seed). Two arms are compared only when their configs are equal apart from the
factor under test, so every comparison isolates one factor:

- H1 (necessity): naive training, dense (density 1) vs each sparse density; the rest of the config equal.
  Effect = F_dense - F_sparse (average forgetting, loss form): positive means dense forgot more.
- H2 (crossover): each naive sparse arm against a dense reference of the same shape (the rest of the config
  equal) and against an iso-parameter dense reference (a dense model whose parameter count is within
  ``ISO_TOL`` of the sparse model's nonzero count, DESIGN §4.3); crossover phase of average seen loss with a
  bootstrap CI over seeds.
- H3 (topology): different topology, the rest equal (allocation included), realised masked densities
  (summary ``density``) within ``DENSITY_TOL`` of each other. Arms configured at the same density whose
  realised densities differ by more are listed as "not compared", never silently tested. Effect = F_a - F_b.

Verdict rules (DESIGN §10): a test needs n >= ``MIN_SEEDS`` paired seeds, else "not testable (n = k)";
identical paired differences have no p-value ("no variance"); each family's p-values (paired t and Wilcoxon
separately) are Holm-corrected over its testable comparisons. A comparison is *supported* when its Holm p
(paired t) is below ``ALPHA`` with the effect in the claimed direction, *contradicted* when it is below
``ALPHA`` in the opposite direction, and *inconclusive* otherwise. H3's claim ("topologies differ") has no
direction, so it is never contradicted. H2 counts a crossover only when its bootstrap CI is finite, i.e. at
least 97.5% of the resamples cross.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from sparsecl.stats.crossover import bootstrap_crossover
from sparsecl.stats.intervals import bootstrap_ci, t_interval
from sparsecl.stats.labels import MEASURES, STATS_MEASURES
from sparsecl.stats.tests import holm, paired_tests
from sparsecl.store.record import RunSummary, as_summary

ALPHA = 0.05
MIN_SEEDS = 3
"""Fewest paired seeds for a hypothesis test (DESIGN §10)."""
BOOT_MIN_N = 5
"""Fewest seeds for a percentile-bootstrap CI to be shown: below it the interval is close to [min, max]."""
DENSITY_TOL = 0.01
"""Largest relative difference of realised densities for two arms to count as 'equal density'."""
ISO_TOL = 0.03
"""Largest relative difference between a dense model's parameters and a sparse model's nonzeros for the
dense model to be the sparse one's iso-parameter reference."""
IGNORED = ("name", "group", "seed", "threads", "device", "log")
TOPOLOGY_KEYS = ("sparse.topology", "sparse.brf_r", "sparse.brf_degree", "sparse.density")
METRICS = {k: MEASURES[k].label for k in STATS_MEASURES}
STATUSES = ("supported", "contradicted", "inconclusive", "not testable")


@dataclass
class Run:
    run_id: str
    config: dict[str, Any]
    summary: RunSummary | None
    """None: the run has no summary.json (failed or unfinished). A JSON object given here is read once through
    ``as_summary``, so every reader sees typed fields."""
    status: str = "done"
    error: str | None = None

    def __post_init__(self) -> None:
        if self.summary is not None:
            self.summary = as_summary(self.summary)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


@dataclass
class ArmGroup:
    name: str
    runs: list[Run] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        return self.runs[0].config

    @property
    def density(self) -> float:
        """The configured density."""
        return float(self.config.get("sparse", {}).get("density", 1.0))

    @property
    def realised_density(self) -> float:
        """Mean over runs of the realised masked density (summary ``density``); the configured one if absent."""
        m = self.mean("density")
        return self.density if m is None else m

    @property
    def topology(self) -> str:
        return "dense" if self.density >= 1.0 else str(self.config.get("sparse", {}).get("topology", "er"))

    @property
    def method(self) -> str:
        return str(self.config.get("method", {}).get("name", "naive"))

    def by_seed(self, metric: str) -> dict[int, Any]:
        out = {}
        for r in self.runs:
            s = r.summary
            if s is not None and s.value(metric) is not None:
                out[int(r.config.get("seed", 0))] = s.value(metric)
        return out

    def values(self, metric: str) -> list[float]:
        return list(self.by_seed(metric).values())

    def mean(self, key: str) -> float | None:
        """Mean of a numeric summary key over the runs that have it (None when none has it)."""
        found = [_number(s.value(key)) for s in (r.summary for r in self.runs) if s is not None]
        vals = [v for v in found if v is not None]
        return sum(vals) / len(vals) if vals else None


def groups(runs: Sequence[Run]) -> list[ArmGroup]:
    """Finished runs grouped into arms, in first-seen order."""
    out: dict[str, ArmGroup] = {}
    for r in runs:
        s = r.summary
        if s is None:
            continue
        g = s.group or r.config.get("group") or r.run_id
        out.setdefault(g, ArmGroup(g)).runs.append(r)
    return list(out.values())


def context(cfg: dict[str, Any], drop: Sequence[str]) -> str:
    """The config minus ignored keys and minus the dotted keys in ``drop``, as a comparable string."""
    d = json.loads(json.dumps(cfg))
    for k in IGNORED:
        d.pop(k, None)
    for key in drop:
        parts = key.split(".")
        cur = d
        for p in parts[:-1]:
            cur = cur.get(p, {}) if isinstance(cur, dict) else {}
        if isinstance(cur, dict):
            cur.pop(parts[-1], None)
    return json.dumps(d, sort_keys=True)


def rel_diff(a: float, b: float) -> float:
    """|a - b| relative to the larger of the two."""
    top = max(abs(a), abs(b))
    return 0.0 if top == 0 else abs(a - b) / top


def arm_rows(gs: Sequence[ArmGroup]) -> list[dict[str, Any]]:
    """Per arm: n, realised density and, per headline metric, the mean with its t CI and, only from
    ``BOOT_MIN_N`` seeds on, a percentile-bootstrap CI (NaN below)."""
    rows = []
    for g in gs:
        row: dict[str, Any] = {"arm": g.name, "n": len(g.runs), "method": g.method, "topology": g.topology,
                               "density": g.density, "realised_density": g.realised_density,
                               "params_nonzero": g.mean("params_nonzero"),
                               "dead_unit_fraction": g.mean("dead_unit_fraction")}
        for m in METRICS:
            vals = g.values(m)
            mean, tlo, thi = t_interval(vals)
            blo = bhi = math.nan
            if len(vals) >= BOOT_MIN_N:
                _, blo, bhi = bootstrap_ci(vals)
            row[m] = {"mean": mean, "t_lo": tlo, "t_hi": thi, "boot_lo": blo, "boot_hi": bhi, "n": len(vals)}
        rows.append(row)
    return rows


def density_curve(gs: Sequence[ArmGroup]) -> dict[str, list[dict[str, Any]]]:
    """Average forgetting (mean, t CI) against density, one line per (method, topology). A dense arm joins a
    line when its config equals a sparse arm of that line apart from ``sparse``; its point says 'dense'."""
    lines: dict[str, list[dict[str, Any]]] = {}
    members: dict[str, list[ArmGroup]] = {}
    dense = [g for g in gs if g.density >= 1.0]
    for g in gs:
        if g.density >= 1.0:
            continue
        key = f"{g.method} / {g.topology}"
        lines.setdefault(key, []).append(_curve_point(g))
        members.setdefault(key, []).append(g)
    for key, pts in lines.items():
        ctxs = {context(s.config, ["sparse"]) for s in members[key]}
        for g in dense:
            if context(g.config, ["sparse"]) in ctxs:
                pts.append(_curve_point(g))
        pts.sort(key=lambda p: p["density"])
    if not lines and dense:
        for g in dense:
            lines.setdefault(f"{g.method} / dense", []).append(_curve_point(g))
    return lines


def _curve_point(g: ArmGroup) -> dict[str, Any]:
    mean, lo, hi = t_interval(g.values("avg_forgetting"))
    return {"arm": g.name, "density": g.realised_density, "topology": g.topology,
            "n": len(g.values("avg_forgetting")), "mean": mean, "lo": lo, "hi": hi}


def _pair(a: ArmGroup, b: ArmGroup, metric: str) -> tuple[list[float], list[float]]:
    sa, sb = a.by_seed(metric), b.by_seed(metric)
    seeds = sorted(set(sa) & set(sb))
    return [sa[s] for s in seeds], [sb[s] for s in seeds]


def _naive(gs: Sequence[ArmGroup], dense: bool) -> list[ArmGroup]:
    return [g for g in gs if g.method == "naive" and (g.density >= 1.0) == dense]


def h1_pairs(gs: Sequence[ArmGroup]) -> list[tuple[ArmGroup, ArmGroup]]:
    """(dense, sparse) naive arms whose configs differ only in ``sparse``."""
    return [(d, s) for d in _naive(gs, True) for s in _naive(gs, False)
            if context(d.config, ["sparse"]) == context(s.config, ["sparse"])]


REFERENCES = ("same shape", "iso-parameter", "iso-masked-parameter")


def reference_kind(dense: ArmGroup, sparse: ArmGroup) -> str | None:
    """What the dense arm is to the sparse arm: 'same shape' (the sparse arm's widths, no widening),
    'iso-parameter' (its parameter count within ``ISO_TOL`` of the sparse model's nonzeros), 'iso-masked-parameter'
    (the configured model that ``matching=masked_params`` widened the sparse one against), or None."""
    matching = sparse.config.get("sparse", {}).get("matching", "shape")
    same_model = dense.config.get("model") == sparse.config.get("model")
    if same_model and matching == "shape":
        return "same shape"
    total, nonzero = dense.mean("params_total"), sparse.mean("params_nonzero")
    if total is not None and nonzero and rel_diff(total, nonzero) <= ISO_TOL:
        return "iso-parameter"
    if same_model and matching == "masked_params":
        return "iso-masked-parameter"
    return None


def h2_pairs(gs: Sequence[ArmGroup]) -> list[tuple[ArmGroup, ArmGroup, str]]:
    """(dense, sparse, reference kind) for naive arms equal apart from ``sparse`` and ``model``."""
    out = []
    for d in _naive(gs, True):
        for s in _naive(gs, False):
            if context(d.config, ["sparse", "model"]) == context(s.config, ["sparse", "model"]):
                kind = reference_kind(d, s)
                if kind is not None:
                    out.append((d, s, kind))
    return out


def h3_pairs(gs: Sequence[ArmGroup]) -> list[tuple[ArmGroup, ArmGroup]]:
    """Sparse arms of different topology, the rest of the config equal, at the same configured density or
    realised densities within ``DENSITY_TOL`` (the tests then refuse pairs whose realised densities differ)."""
    sparse = [g for g in gs if g.density < 1.0]
    return [(a, b) for a, b in combinations(sparse, 2)
            if a.topology != b.topology and context(a.config, TOPOLOGY_KEYS) == context(b.config, TOPOLOGY_KEYS)
            and (a.density == b.density or rel_diff(a.realised_density, b.realised_density) <= DENSITY_TOL)]


def _context_values(a: ArmGroup, b: ArmGroup) -> dict[str, Any]:
    """What a reader needs beside a forgetting comparison: realised densities, dead units, F/D and D."""
    return {"density_a": a.realised_density, "density_b": b.realised_density,
            "dead_a": a.mean("dead_unit_fraction"), "dead_b": b.mean("dead_unit_fraction"),
            "nf_a": a.mean("avg_normalised_forgetting"), "nf_b": b.mean("avg_normalised_forgetting"),
            "drop_a": mean_learned_drop(a), "drop_b": mean_learned_drop(b)}


def mean_learned_drop(g: ArmGroup) -> float | None:
    """Mean over runs and domains of the learned drop D_i (summary ``learned_drop``), None if absent."""
    vals = [v for s in (r.summary for r in g.runs) if s is not None
            for v in (_number(d) for d in (s.learned_drop or {}).values()) if v is not None]
    return sum(vals) / len(vals) if vals else None


def _not_testable(n: int, no_variance: bool) -> str | None:
    if n < MIN_SEEDS:
        return f"not testable (n = {n})"
    if no_variance:
        return f"no variance ({n} identical differences)"
    return None


def _test_family(hyp: str, pairs: list[tuple[ArmGroup, ArmGroup]], metric: str) -> list[dict[str, Any]]:
    rows = []
    for a, b in pairs:
        x, y = _pair(a, b, metric)
        res = paired_tests(x, y)
        row = {"hypothesis": hyp, "comparison": f"{a.name} - {b.name}", "a": a.name, "b": b.name,
               "metric": metric, "n": res.n, "effect": res.mean_diff, "ci_low": res.ci_low,
               "ci_high": res.ci_high, "p_t": res.p_t, "p_wilcoxon": res.p_wilcoxon, **_context_values(a, b)}
        reason = None
        rd = rel_diff(a.realised_density, b.realised_density)
        if hyp == "H3" and rd > DENSITY_TOL:
            reason = (f"not compared: realised density {a.realised_density:.2%} vs {b.realised_density:.2%} "
                      f"({rd:.1%} apart, more than {DENSITY_TOL:.0%})")
        reason = reason or _not_testable(res.n, res.no_variance)
        if reason is not None:
            row.update(p_t=math.nan, p_wilcoxon=math.nan, status="not testable", verdict=reason)
        rows.append(row)
    for key in ("p_t", "p_wilcoxon"):
        adj = holm([r[key] for r in rows])
        for r, p in zip(rows, adj, strict=True):
            r[f"{key}_holm"] = p
    for r in rows:
        if "status" in r:
            continue
        if r["p_t_holm"] >= ALPHA:
            r["status"], r["verdict"] = "inconclusive", "inconclusive"
        elif hyp == "H3":
            r["status"], r["verdict"] = "supported", "topologies differ"
        elif r["effect"] > 0:
            r["status"], r["verdict"] = "supported", "supported"
        else:
            r["status"], r["verdict"] = "contradicted", "contradicted (dense forgot less)"
    return rows


def comparison_rows(gs: Sequence[ArmGroup]) -> list[dict[str, Any]]:
    """Paired tests by seed for H1 (dense - sparse) and H3 (topology a - topology b), Holm per family."""
    return (_test_family("H1", h1_pairs(gs), "avg_forgetting")
            + _test_family("H3", h3_pairs(gs), "avg_forgetting"))


def crossover_rows(gs: Sequence[ArmGroup]) -> list[dict[str, Any]]:
    """H2: crossover phase of each sparse arm against each of its dense references, with a bootstrap CI over
    seeds. ``status`` is 'crossover' only for n >= MIN_SEEDS, a sparse arm that starts worse, and a finite CI."""
    rows = []
    for d, s, kind in h2_pairs(gs):
        cs, cd = s.by_seed("avg_seen_loss_by_phase"), d.by_seed("avg_seen_loss_by_phase")
        seeds = sorted(set(cs) & set(cd))
        if not seeds:
            continue
        res = bootstrap_crossover([cs[k] for k in seeds], [cd[k] for k in seeds], paired=True)
        n, p = res.n, res.phase
        finite = not math.isnan(res.ci_high) and math.isfinite(res.ci_high)
        ci = res.text().partition(" ")[2] or "-"
        if n < MIN_SEEDS:
            status, verdict = "not testable", f"not testable (n = {n})"
        elif p is None:
            status, verdict = "no crossover", f"no crossover (n = {n})"
        elif p == 1:
            status, verdict = "sparse better throughout", f"sparse better from phase 1, no crossover needed (n = {n})"
        elif not res.starts_worse:
            status, verdict = "no crossover", f"sparse did not start worse (n = {n})"
        elif not finite:
            status = "no crossover"
            verdict = (f"no reliable crossover: the mean curves cross at phase {p}, but "
                       f"{1 - res.frac_crossed:.0%} of bootstrap resamples never cross (n = {n}, 95% CI {ci})")
        else:
            status, verdict = "crossover", f"crossover at phase {p}, 95% CI {ci} (n = {n})"
        rows.append({"hypothesis": "H2", "comparison": f"{s.name} vs {d.name} ({kind} dense)", "sparse": s.name,
                     "dense": d.name, "reference": kind, "n": n, "phases": len(cs[seeds[0]]) - 1,
                     "crossover": p, "ci_low": res.ci_low, "ci_high": res.ci_high, "text": res.text(),
                     "frac_crossed": res.frac_crossed, "starts_worse": res.starts_worse,
                     "sparse_nonzero": s.mean("params_nonzero"), "dense_params": d.mean("params_total"),
                     "status": status, "verdict": verdict})
    return rows


def _n_text(rows: Sequence[dict[str, Any]]) -> str:
    ns = sorted({r["n"] for r in rows})
    return str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"


def _n_fields(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``n``: the smallest paired n of the family; ``n_text``: its range for the table."""
    return {"n": min((r["n"] for r in rows), default=0), "n_text": _n_text(rows) if rows else "0"}


def family_headline(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Holm family result: counts per status and the median effect (median_low: an actual comparison, so the
    CI beside it is that comparison's own 95% t CI) over the testable comparisons."""
    counts = {k: sum(r["status"] == k for r in rows) for k in STATUSES}
    tested = [r for r in rows if r["status"] != "not testable"]
    out: dict[str, Any] = {"counts": counts, "family": len(tested), "median": None}
    if not tested:
        reasons = sorted({r["verdict"] for r in rows})
        out["verdict"] = reasons[0] if len(reasons) == 1 else "not testable: " + "; ".join(reasons)
        return out
    med = statistics.median_low(r["effect"] for r in tested)
    row = next(r for r in tested if r["effect"] == med)
    out["median"] = row
    text = (f"Holm family of {len(tested)}: {counts['supported']} supported, {counts['contradicted']} "
            f"contradicted, {counts['inconclusive']} inconclusive")
    if counts["not testable"]:
        text += f"; {counts['not testable']} not testable"
    out["verdict"] = text
    return out


def _effect_text(row: dict[str, Any]) -> str:
    return (f"median {row['effect']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}] "
            f"({row['comparison']})")


def verdicts(gs: Sequence[ArmGroup]) -> list[dict[str, Any]]:
    """One line per hypothesis: the Holm family result (counts supported / contradicted / inconclusive / not
    testable), the median effect with its CI, n, the test and the smallest Holm p."""
    comps = comparison_rows(gs)
    out = []
    for hyp, label in (("H1", "dense forgets more than sparse (naive)"),
                       ("H3", "topology changes forgetting at equal realised density")):
        rows = [r for r in comps if r["hypothesis"] == hyp]
        if not rows:
            out.append({"hypothesis": hyp, "claim": label, **_n_fields([]), "test": "-", "effect": None, "p": None,
                        "verdict": "not testable: no matching arms in these runs", "rows": []})
            continue
        head = family_headline(rows)
        tested = [r for r in rows if r["status"] != "not testable"]
        p = min((r["p_t_holm"] for r in tested), default=None)
        wil = min((r["p_wilcoxon_holm"] for r in tested if not math.isnan(r["p_wilcoxon_holm"])), default=None)
        test = (f"paired t by seed, Holm over {len(tested)} (p: the smallest); smallest Wilcoxon p_holm = "
                f"{_fmt_p(wil)}"
                if tested else "-")
        out.append({"hypothesis": hyp, "claim": label, **_n_fields(rows), "test": test,
                    "comparison": head["median"]["comparison"] if head["median"] else "-",
                    "effect": _effect_text(head["median"]) if head["median"] else None, "p": p,
                    "verdict": head["verdict"], "counts": head["counts"], "rows": rows})
    out.insert(1, _h2_headline(crossover_rows(gs)))
    return out


def _h2_headline(cross: list[dict[str, Any]]) -> dict[str, Any]:
    claim = "a sparse arm starts worse than dense and overtakes it"
    if not cross:
        return {"hypothesis": "H2", "claim": claim, **_n_fields([]), "test": "-", "effect": None, "p": None,
                "verdict": "not testable: no dense/sparse naive pair", "rows": []}
    parts = []
    for kind in REFERENCES:
        rows = [r for r in cross if r["reference"] == kind]
        if rows:
            k = sum(r["status"] == "crossover" for r in rows)
            nt = sum(r["status"] == "not testable" for r in rows)
            parts.append(f"vs {kind} dense: {k}/{len(rows)} pairs cross with a finite CI"
                         + (f" ({nt} not testable)" if nt else ""))
    crossed = [r for r in cross if r["status"] == "crossover"]
    best = min(crossed, key=lambda r: r["crossover"]) if crossed else cross[0]
    verdict = "; ".join(parts)
    if all(r["status"] == "not testable" for r in cross):
        verdict = f"not testable (n = {_n_text(cross)})"
    return {"hypothesis": "H2", "claim": claim, **_n_fields(cross),
            "test": "crossover of mean A(j) curves; counts only with a finite paired-bootstrap CI over seeds",
            "comparison": best["comparison"], "effect": best["verdict"], "p": None, "verdict": verdict,
            "rows": cross}


def _fmt_p(p: float | None) -> str:
    return "-" if p is None or math.isnan(p) else f"{p:.3g}"
