"""Probe series for the report, from the index ``probes`` table (or summary.json's ``probes`` as a fallback).

The trainer writes one row per (run, phase, step, probe, key, value). Keys without a '/' are a probe's
headline numbers (e.g. ``hessian_eigs/lambda_max`` is stored as probe ``hessian_eigs``, key ``lambda_max``);
keys with a '/' are per-layer, per-module or per-domain details and are left to the raw exports.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sparsecl.stats.analysis import ArmGroup

Points = dict[str, dict[str, dict[float, float]]]  # probe -> key -> step -> value
Series = dict[str, dict[str, dict[str, tuple[list[float], list[float]]]]]  # probe -> key -> arm -> (x, y)


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
    """probe -> headline key -> arm -> (steps present in every run of the arm, mean over its runs)."""
    out: Series = {}
    for g in groups:
        per_run = []
        for r in g.runs:
            pts = _from_table(table_rows.get(r.run_id, []))
            if not pts and r.summary is not None:
                pts = _from_summary(r.summary.get("probes"))
            per_run.append(pts)
        for probe in sorted(set().union(*(p.keys() for p in per_run)) if per_run else set()):
            keys = set().union(*(p.get(probe, {}).keys() for p in per_run))
            for key in sorted(keys):
                runs = [p[probe][key] for p in per_run if key in p.get(probe, {})]
                xs = sorted(set.intersection(*(set(s) for s in runs)))
                if xs:
                    ys = [float(np.mean([s[x] for s in runs])) for x in xs]
                    out.setdefault(probe, {}).setdefault(key, {})[g.name] = (xs, ys)
    return out
