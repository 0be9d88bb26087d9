"""From finished runs to evidence: per-arm means with CIs, the density-forgetting curve, and H1-H3 verdicts.

Inputs are ``Run`` records (config dict + summary dict). Runs are grouped into arms by ``group`` (runs
that differ only in their seed). Two arms are compared only when their configs are equal apart from the
factor under test, so every comparison isolates one factor:

- H1 (necessity): naive training, dense (density 1) vs each sparse density; the rest of the config equal.
  Effect = F_dense - F_sparse (average forgetting, loss form): positive means dense forgot more.
- H2 (crossover): the same pairs; crossover phase of average seen loss with a bootstrap CI over seeds.
- H3 (topology): equal density < 1, different topology, the rest equal (allocation included).
  Effect = F_a - F_b.
Each family's p-values (paired t and Wilcoxon separately) are Holm-corrected.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from sparsecl.stats.crossover import bootstrap_crossover
from sparsecl.stats.intervals import bootstrap_ci, t_interval
from sparsecl.stats.tests import holm, paired_tests

ALPHA = 0.05
IGNORED = ("name", "group", "seed", "threads", "device", "log")
METRICS = {
    "avg_forgetting": "avg forgetting (loss, + = forgot)",
    "bwt": "BWT (loss, - = forgetting)",
    "fwt": "FWT (loss, + = helped)",
    "final_avg_loss": "final avg seen loss (lower = better)",
}


@dataclass
class Run:
    run_id: str
    config: dict[str, Any]
    summary: dict[str, Any] | None
    status: str = "done"
    error: str | None = None


@dataclass
class ArmGroup:
    name: str
    runs: list[Run] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        return self.runs[0].config

    @property
    def density(self) -> float:
        return float(self.config.get("sparse", {}).get("density", 1.0))

    @property
    def topology(self) -> str:
        return "dense" if self.density >= 1.0 else str(self.config.get("sparse", {}).get("topology", "er"))

    @property
    def method(self) -> str:
        return str(self.config.get("method", {}).get("name", "naive"))

    def by_seed(self, metric: str) -> dict[int, float]:
        return {int(r.config.get("seed", 0)): r.summary[metric] for r in self.runs
                if r.summary is not None and r.summary.get(metric) is not None}

    def values(self, metric: str) -> list[float]:
        return list(self.by_seed(metric).values())


def groups(runs: Sequence[Run]) -> list[ArmGroup]:
    """Finished runs grouped into arms, in first-seen order."""
    out: dict[str, ArmGroup] = {}
    for r in runs:
        if r.summary is None:
            continue
        g = r.summary.get("group") or r.config.get("group") or r.run_id
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


def arm_rows(gs: Sequence[ArmGroup]) -> list[dict[str, Any]]:
    """Per arm: n and, for each headline metric, the mean with t and percentile-bootstrap 95% CIs."""
    rows = []
    for g in gs:
        row: dict[str, Any] = {"arm": g.name, "n": len(g.runs), "method": g.method, "topology": g.topology,
                               "density": g.density}
        for m in METRICS:
            vals = g.values(m)
            mean, tlo, thi = t_interval(vals)
            _, blo, bhi = bootstrap_ci(vals)
            row[m] = {"mean": mean, "t_lo": tlo, "t_hi": thi, "boot_lo": blo, "boot_hi": bhi, "n": len(vals)}
        rows.append(row)
    return rows


def density_curve(gs: Sequence[ArmGroup]) -> dict[str, list[dict[str, Any]]]:
    """Average forgetting (mean, t CI) against density, one line per (method, topology); dense joins each."""
    lines: dict[str, list[dict[str, Any]]] = {}
    dense = [g for g in gs if g.density >= 1.0]
    for g in gs:
        if g.density >= 1.0:
            continue
        key = f"{g.method} / {g.topology}"
        lines.setdefault(key, []).append(_curve_point(g))
    for key, pts in lines.items():
        method = key.split(" / ")[0]
        for g in dense:
            if g.method == method:
                pts.append(_curve_point(g))
        pts.sort(key=lambda p: p["density"])
    if not lines and dense:
        for g in dense:
            lines.setdefault(f"{g.method} / dense", []).append(_curve_point(g))
    return lines


def _curve_point(g: ArmGroup) -> dict[str, Any]:
    mean, lo, hi = t_interval(g.values("avg_forgetting"))
    return {"arm": g.name, "density": g.density, "n": len(g.values("avg_forgetting")), "mean": mean, "lo": lo,
            "hi": hi}


def _pair(a: ArmGroup, b: ArmGroup, metric: str) -> tuple[list[float], list[float]]:
    sa, sb = a.by_seed(metric), b.by_seed(metric)
    seeds = sorted(set(sa) & set(sb))
    return [sa[s] for s in seeds], [sb[s] for s in seeds]


def _comparisons(gs: Sequence[ArmGroup], hyp: str, metric: str = "avg_forgetting") -> list[tuple[ArmGroup, ArmGroup]]:
    pairs = []
    if hyp in ("H1", "H2"):
        for d in (g for g in gs if g.density >= 1.0 and g.method == "naive"):
            for s in (g for g in gs if g.density < 1.0 and g.method == "naive"):
                if context(d.config, ["sparse"]) == context(s.config, ["sparse"]):
                    pairs.append((d, s))
    elif hyp == "H3":
        sparse = [g for g in gs if g.density < 1.0]
        for a, b in combinations(sparse, 2):
            if a.topology != b.topology and a.density == b.density and \
                    context(a.config, ["sparse.topology", "sparse.brf_r", "sparse.brf_degree"]) == \
                    context(b.config, ["sparse.topology", "sparse.brf_r", "sparse.brf_degree"]):
                pairs.append((a, b))
    return pairs


def _test_family(hyp: str, pairs: list[tuple[ArmGroup, ArmGroup]], metric: str) -> list[dict[str, Any]]:
    rows = []
    for a, b in pairs:
        x, y = _pair(a, b, metric)
        res = paired_tests(x, y)
        rows.append({"hypothesis": hyp, "comparison": f"{a.name} - {b.name}", "a": a.name, "b": b.name,
                     "metric": metric, "n": res.n, "effect": res.mean_diff, "ci_low": res.ci_low,
                     "ci_high": res.ci_high, "p_t": res.p_t, "p_wilcoxon": res.p_wilcoxon})
    for key in ("p_t", "p_wilcoxon"):
        adj = holm([r[key] for r in rows])
        for r, p in zip(rows, adj, strict=True):
            r[f"{key}_holm"] = p
    return rows


def comparison_rows(gs: Sequence[ArmGroup]) -> list[dict[str, Any]]:
    """Paired tests by seed for H1 (dense - sparse) and H3 (topology a - topology b), Holm per family."""
    rows = _test_family("H1", _comparisons(gs, "H1"), "avg_forgetting")
    rows += _test_family("H3", _comparisons(gs, "H3"), "avg_forgetting")
    for r in rows:
        sig = r["p_t_holm"] < ALPHA if not math.isnan(r["p_t_holm"]) else False
        if r["hypothesis"] == "H1":
            r["verdict"] = ("supported" if sig and r["effect"] > 0 else "contradicted" if sig else "not significant")
        else:
            r["verdict"] = "topologies differ" if sig else "not significant"
    return rows


def crossover_rows(gs: Sequence[ArmGroup]) -> list[dict[str, Any]]:
    """H2: crossover phase of each sparse arm against its dense arm, with a bootstrap CI over seeds."""
    rows = []
    for d, s in _comparisons(gs, "H2"):
        cs, cd = s.by_seed("avg_seen_loss_by_phase"), d.by_seed("avg_seen_loss_by_phase")
        seeds = sorted(set(cs) & set(cd))
        if not seeds:
            continue
        res = bootstrap_crossover([cs[k] for k in seeds], [cd[k] for k in seeds], paired=True)
        n_phases = len(cs[seeds[0]]) - 1
        if res.phase is None:
            verdict = "no crossover"
        elif res.phase == 1:
            verdict = "sparse better from phase 1 (no crossover needed)"
        else:
            verdict = f"crossover at phase {res.phase}"
        rows.append({"hypothesis": "H2", "comparison": f"{s.name} vs {d.name}", "sparse": s.name, "dense": d.name,
                     "n": res.n, "phases": n_phases, "crossover": res.phase, "ci_low": res.ci_low,
                     "ci_high": res.ci_high, "text": res.text(), "frac_crossed": res.frac_crossed,
                     "starts_worse": res.starts_worse, "verdict": verdict})
    return rows


def verdicts(gs: Sequence[ArmGroup]) -> list[dict[str, Any]]:
    """One line per hypothesis: what was compared, n, the test, the strongest effect and its p, a verdict."""
    comps = comparison_rows(gs)
    cross = crossover_rows(gs)
    out = []
    for hyp, label in (("H1", "dense forgets more than sparse (naive)"),
                       ("H3", "topology changes forgetting at equal density")):
        rows = [r for r in comps if r["hypothesis"] == hyp]
        if not rows:
            out.append({"hypothesis": hyp, "claim": label, "n": 0, "test": "-", "effect": None, "p": None,
                        "verdict": "not testable: no matching arms in these runs"})
            continue
        best = min(rows, key=lambda r: (math.inf if math.isnan(r["p_t_holm"]) else r["p_t_holm"]))
        n_sig = sum(r["verdict"] in ("supported", "topologies differ") for r in rows)
        verdict = (f"supported in {n_sig}/{len(rows)} comparisons" if n_sig else
                   f"not supported (0/{len(rows)} significant)")
        if hyp == "H1" and any(r["verdict"] == "contradicted" for r in rows):
            verdict += "; contradicted in " + ", ".join(r["comparison"] for r in rows if r["verdict"] == "contradicted")
        wil = _fmt_p(best["p_wilcoxon_holm"])
        out.append({"hypothesis": hyp, "claim": label, "n": best["n"],
                    "test": f"paired t by seed, Holm over {len(rows)} (Wilcoxon p_holm={wil})",
                    "comparison": best["comparison"], "effect": best["effect"], "p": best["p_t_holm"],
                    "verdict": verdict})
    if cross:
        crossed = [r for r in cross if r["crossover"] is not None and r["crossover"] > 1 and r["starts_worse"]]
        best = crossed[0] if crossed else cross[0]
        out.insert(1, {"hypothesis": "H2", "claim": "a sparse arm starts worse than dense and overtakes it",
                       "n": best["n"], "test": "crossover of mean A(j) curves, paired bootstrap over seeds",
                       "comparison": best["comparison"], "effect": best["text"], "p": None,
                       "verdict": (f"crossover in {len(crossed)}/{len(cross)} pairs" if crossed
                                   else "no crossover (none of the pairs starts worse and overtakes)")})
    else:
        out.insert(1, {"hypothesis": "H2", "claim": "a sparse arm starts worse than dense and overtakes it", "n": 0,
                       "test": "-", "effect": None, "p": None, "verdict": "not testable: no dense/sparse naive pair"})
    return out


def _fmt_p(p: float) -> str:
    return "-" if p is None or math.isnan(p) else f"{p:.3g}"
