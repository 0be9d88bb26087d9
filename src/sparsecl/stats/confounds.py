"""Threats to validity of one hypothesis, computed from the runs it rests on.

Each line names a confound that applies to *these* arms and gives its size: too few seeds for a test (or for
Wilcoxon to reach 0.05), realised density off the configured one, output units left without inputs, capacity
and matching, a sparse arm that learned less (so forgets less), how many tokens an evaluation scores, and
validation text that also occurs in training. Lines whose data are missing say so instead of guessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sparsecl.stats.analysis import BOOT_MIN_N, DENSITY_TOL, MIN_SEEDS, ArmGroup, rel_diff

SMALL_DROP = 0.8
"""Flag a comparison when one arm's mean learned drop is below this fraction of the other's."""
OVERLAP_FLAG = 0.05
"""Flag a domain when at least this fraction of its validation lines also occur in training."""


def _arms(hyp: dict[str, Any], gs: Sequence[ArmGroup]) -> list[ArmGroup]:
    names = {r[k] for r in hyp.get("rows", []) for k in ("a", "b", "sparse", "dense") if k in r}
    return [g for g in gs if g.name in names]


def _seeds(rows: Sequence[dict[str, Any]]) -> str | None:
    ns = sorted({r["n"] for r in rows})
    low = [r for r in rows if r["n"] < MIN_SEEDS]
    if low:
        return (f"seeds: {len(low)} of {len(rows)} comparisons have fewer than {MIN_SEEDS} paired seeds "
                f"(n = {', '.join(str(n) for n in sorted({r['n'] for r in low}))}): they are not tested")
    n = ns[0]
    if n < 6:
        return (f"seeds: n = {n} paired seeds; the exact two-sided Wilcoxon p cannot go below {2 / 2 ** n:.3g}, so "
                f"only the t test can reach 0.05" + (f"; bootstrap CIs need n >= {BOOT_MIN_N} and are not shown"
                                                     if n < BOOT_MIN_N else ""))
    return None


def _density(arms: Sequence[ArmGroup], rows: Sequence[dict[str, Any]]) -> list[str]:
    out = []
    for g in arms:
        if g.density < 1.0 and rel_diff(g.realised_density, g.density) > DENSITY_TOL:
            word = "fewer" if g.realised_density < g.density else "more"
            out.append(f"density: {g.name} realises {g.realised_density:.2%} against {g.density:.2%} configured "
                       f"({rel_diff(g.realised_density, g.density):.1%} {word} connections)")
    skipped = [r for r in rows if r["verdict"].startswith("not compared")]
    if skipped:
        out.append(f"density: {len(skipped)} pair(s) differ by more than {DENSITY_TOL:.0%} in realised density "
                   f"and are not compared: "
                   + ", ".join(r["comparison"] for r in skipped))
    return out


def _dead(arms: Sequence[ArmGroup]) -> list[str]:
    sparse = [g for g in arms if g.density < 1.0]
    vals = {g.name: g.mean("dead_unit_fraction") for g in sparse}
    if sparse and all(v is None for v in vals.values()):
        return ["dead units: not recorded in these summaries (runs older than dead_unit_fraction)"]
    return [f"dead units: {name}: {v:.1%} of the masked layers' output units have no input connection"
            for name, v in vals.items() if v]


def _capacity(hyp: str, arms: Sequence[ArmGroup], rows: Sequence[dict[str, Any]]) -> list[str]:
    out = []
    for g in (g for g in arms if g.density < 1.0):
        nz, total = g.mean("params_nonzero"), g.mean("params_total")
        split = next((s.nonzero_split for s in (r.summary for r in g.runs)
                      if s is not None and isinstance(s.nonzero_split, dict)), None)
        matching = g.config.get("sparse", {}).get("matching", "shape")
        text = f"capacity: {g.name} ({matching} matching)"
        if nz and total:
            text += f" keeps {nz:,.0f} of {total:,.0f} parameters ({nz / total:.1%})"
        if split and nz:
            emb = float(split.get("embeddings", 0))
            text += f"; embeddings hold {emb / nz:.0%} of its nonzeros, masked layers {split.get('masked', 0) / nz:.0%}"
        out.append(text)
    if hyp == "H2":
        kinds = {r["reference"] for r in rows}
        for kind in ("iso-parameter", "same shape"):
            if kind not in kinds:
                out.append(f"reference: no {kind} dense arm matches these sparse arms"
                           + (" (DESIGN §4.3 states H2 against the iso-parameter one)" if kind == "iso-parameter"
                              else ""))
    return out


def _learned(rows: Sequence[dict[str, Any]]) -> list[str]:
    pairs = [r for r in rows if "drop_a" in r]
    if not pairs:
        return []
    if all(r["drop_a"] is None or r["drop_b"] is None for r in pairs):
        return ["learned drop D and normalised forgetting F/D: not recorded in these summaries"]
    out = []
    for r in pairs:
        da, db = r["drop_a"], r["drop_b"]
        if da is None or db is None or max(da, db) <= 0:
            continue
        if min(da, db) < SMALL_DROP * max(da, db):
            low, lo, hi = (r["a"], da, db) if da < db else (r["b"], db, da)
            out.append(f"learned drop: in {r['comparison']}, {low} learned less (mean D {lo:.3f} vs {hi:.3f}); "
                       f"absolute forgetting favours it, compare F/D")
    return out


def _evaluation(eval_tokens: dict[str, int]) -> list[str]:
    if not eval_tokens:
        return []
    d = min(eval_tokens, key=lambda k: eval_tokens[k])
    return [f"evaluation: {eval_tokens[d]:,} scored tokens per evaluation for {d}, the fewest of "
            + ", ".join(f"{k} {v:,}" for k, v in eval_tokens.items())]


def _overlap(overlap: dict[str, float]) -> list[str]:
    return [f"validation overlaps training: {frac:.0%} of {d}'s validation lines (20+ characters) also occur in "
            f"its training documents" + (", so its loss measures recall of seen text more than generalisation"
                                         if frac >= 0.5 else "")
            for d, frac in overlap.items() if frac >= OVERLAP_FLAG]


def confounds(hyp: dict[str, Any], gs: Sequence[ArmGroup], eval_tokens: dict[str, int] | None = None,
              overlap: dict[str, float] | None = None) -> list[str]:
    """The confounds that apply to one hypothesis line of ``verdicts`` (its ``rows`` name the arms)."""
    rows = hyp.get("rows", [])
    if not rows:
        return []
    arms = _arms(hyp, gs)
    out = [s for s in [_seeds(rows)] if s]
    out += _density(arms, rows)
    out += _dead(arms)
    out += _capacity(hyp["hypothesis"], arms, rows)
    out += _learned(rows)
    out += _evaluation(eval_tokens or {})
    out += _overlap(overlap or {})
    return out
