"""Probe series for the report, from an index ``probes`` table or a ``probes`` key in summary.json.

Probes are written by another part of sparsecl; this reader accepts the plain shapes they can take and
ignores what it cannot read (the report then simply has no probe panels):

- index table ``probes`` with ``run_id``, a name column (``probe``, ``name``, ``metric`` or ``key``), an
  x column (``step`` or ``phase``) and a numeric ``value``; other columns (layer, domain...) are averaged;
- summary ``probes``: {name: [numbers per phase]} or {name: number}, or {name: {phase or step: number}}.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from sparsecl.stats.analysis import ArmGroup

Series = dict[str, dict[str, tuple[list[float], list[float]]]]  # probe -> arm -> (x, y)


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if np.isfinite(v) else None


def _from_table(rows: list[dict[str, Any]]) -> dict[str, dict[float, float]]:
    if not rows:
        return {}
    cols = rows[0].keys()
    name_col = next((c for c in ("probe", "name", "metric", "key") if c in cols), None)
    x_col = next((c for c in ("step", "phase") if c in cols), None)
    if name_col is None or x_col is None or "value" not in cols:
        return {}
    acc: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        x, v = _num(r[x_col]), _num(r["value"])
        if x is not None and v is not None:
            acc[str(r[name_col])][x].append(v)
    return {n: {x: float(np.mean(vs)) for x, vs in pts.items()} for n, pts in acc.items()}


def _from_summary(probes: Any) -> dict[str, dict[float, float]]:
    out: dict[str, dict[float, float]] = {}
    if not isinstance(probes, dict):
        return out
    for name, val in probes.items():
        if isinstance(val, list):
            pts = {float(i): _num(v) for i, v in enumerate(val)}
        elif isinstance(val, dict):
            pts = {}
            for k, v in val.items():
                try:
                    pts[float(k)] = _num(v)
                except (TypeError, ValueError):
                    continue
        else:
            pts = {0.0: _num(val)}
        pts = {x: v for x, v in pts.items() if v is not None}
        if pts:
            out[str(name)] = pts  # type: ignore[assignment]
    return out


def probe_series(groups: list[ArmGroup], table_rows: dict[str, list[dict[str, Any]]]) -> Series:
    """probe name -> arm -> (x, mean over the arm's runs at each x present in every run)."""
    out: Series = {}
    for g in groups:
        per_run = []
        for r in g.runs:
            data = _from_table(table_rows.get(r.run_id, []))
            if not data and r.summary is not None:
                data = _from_summary(r.summary.get("probes"))
            per_run.append(data)
        names = set().union(*(d.keys() for d in per_run)) if per_run else set()
        for name in sorted(names):
            runs = [d[name] for d in per_run if name in d]
            xs = sorted(set.intersection(*(set(p) for p in runs)))
            if xs:
                out.setdefault(name, {})[g.name] = (xs, [float(np.mean([p[x] for p in runs])) for x in xs])
    return out
