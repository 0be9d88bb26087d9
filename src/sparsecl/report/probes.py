"""Probe series for the report, from the index ``probes`` table (or summary.json's ``probes`` as a fallback).

The trainer writes one row per (run, phase, step, probe, key, value). Keys without a '/' are a probe's
headline numbers (e.g. ``hessian_eigs/lambda_max`` is stored as probe ``hessian_eigs``, key ``lambda_max``);
keys with a '/' are per-layer, per-module or per-domain details and are left to the raw exports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sparsecl.stats.analysis import ArmGroup
from sparsecl.stats.intervals import t_interval

Points = dict[str, dict[str, dict[float, float]]]  # probe -> key -> step -> value


@dataclass
class Band:
    """One arm's series of one probe key: steps, mean over its runs, 95% t band (NaN for n < 2) and n."""

    x: list[float]
    y: list[float]
    lo: list[float]
    hi: list[float]
    n: int


Series = dict[str, dict[str, dict[str, Band]]]  # probe -> key -> arm -> band

MEANING: dict[str, tuple[str, str]] = {
    "residual_norm": ("|h_{l+1} - h_l| / |h_l| (ratio)", "falling toward 0: blocks stop changing the residual stream"),
    "repr_drift": ("1 - linear CKA (0 = unchanged)", "higher: old domains' representations moved more"),
    "param_drift": ("|theta_b - theta_a| / |theta_a| (ratio)", "higher: weights moved more since the last phase"),
    "update_ratio": ("|update| / |weight| (ratio)", "near 0: updates stalled; large: unstable steps"),
    "subspace_rotation": ("principal angle (degrees)", "higher: the weights' top subspaces rotated more"),
    "lmc": ("loss barrier (nats/token)", "higher: consecutive phases ended in separated basins"),
    "effective_rank": ("effective rank (dimensions)", "lower: features collapse onto fewer directions"),
    "hessian_eigs": ("Hessian eigenvalue (nats/token per unit^2)", "higher lambda_max: a sharper minimum"),
    "hessian_trace": ("Hessian trace (nats/token per unit^2)", "higher: a sharper minimum"),
    "dormant": ("fraction of MLP units", "higher: more dormant units (lost plasticity)"),
    "weight_grad_norm": ("Frobenius norm", "weight norm growing: a common sign of lost plasticity"),
    "interference": ("gradient cosine", "negative: the new domain's updates undo old domains (predicts forgetting)"),
    "noise_scale": ("B_simple (sequences)", "no bad direction: the batch size beyond which steps stop gaining"),
    "fisher": ("mean squared gradient", "higher: the loss is more sensitive to the weights"),
    "plasticity": ("loss ratio to init (1 = as plastic as init)", "above 1: learns a fresh task worse than at init"),
    "forgetting_kl": ("KL(previous phase end || now) (nats/token)",
                      "higher: the policy moved more (predicts forgetting)"),
}
"""Per probe: the y-axis label with units, and which direction is bad (what the report prints beside it)."""


def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _from_table(rows: list[dict[str, Any]]) -> Points:
    out: Points = {}
    for r in rows:
        v = _finite(r.get("value"))
        if v is None or "/" in str(r.get("key", "/")):
            continue
        out.setdefault(str(r["probe"]), {}).setdefault(str(r["key"]), {})[float(r["step"])] = v
    return out


def _from_summary(records: Any) -> Points:
    out: Points = {}
    for rec in records if isinstance(records, list) else []:
        for probe, values in (rec.get("values") or {}).items():
            for key, v in (values or {}).items():
                fv = _finite(v)
                if fv is not None and "/" not in key:
                    out.setdefault(probe, {}).setdefault(key, {})[float(rec["step"])] = fv
    return out


def probe_series(groups: list[ArmGroup], table_rows: dict[str, list[dict[str, Any]]]) -> Series:
    """probe -> headline key -> arm -> band over the steps present in every run of the arm."""
    out: Series = {}
    for g in groups:
        per_run = []
        for r in g.runs:
            pts = _from_table(table_rows.get(r.run_id, []))
            if not pts and r.summary is not None:
                pts = _from_summary(r.summary.probes)
            per_run.append(pts)
        for probe in sorted(set().union(*(p.keys() for p in per_run)) if per_run else set()):
            keys = set().union(*(p.get(probe, {}).keys() for p in per_run))
            for key in sorted(keys):
                runs = [p[probe][key] for p in per_run if key in p.get(probe, {})]
                xs = sorted(set.intersection(*(set(s) for s in runs)))
                if xs:
                    stats = [t_interval([s[x] for s in runs]) for x in xs]
                    out.setdefault(probe, {}).setdefault(key, {})[g.name] = Band(
                        xs, [m for m, _, _ in stats], [lo for _, lo, _ in stats], [hi for _, _, hi in stats], len(runs))
    return out
