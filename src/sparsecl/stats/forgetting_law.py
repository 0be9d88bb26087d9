"""Forgetting against the forgetting-law KL (Shenfeld et al. 2025, arXiv 2509.04259) across a folder's runs.

One point per (run, phase t >= 2 with old LM domains): x = the ``forgetting_kl`` probe's ``kl_new`` at the end
of phase t (KL(pi_before || pi_after) on the new phase's data), y = the phase's forgetting, the mean over the
old domains i (trained before t, not in t, not task domains) of ``L[t][i] - L[t-1][i]`` (loss form, + = forgot).
The rank correlation is Spearman's rho; its 95% CI resamples whole runs (points of one run are not
independent), percentile bootstrap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as st

from sparsecl.stats.analysis import Run
from sparsecl.store.record import RunSummary

RESAMPLES = 2000


@dataclass
class LawPoint:
    run_id: str
    phase: int
    objective: str
    kl_new: float
    forgetting: float


def _phase_end_kl(summary: RunSummary) -> dict[int, float]:
    out = {}
    for rec in summary.probes or []:
        v = (rec.get("values") or {}).get("forgetting_kl", {}).get("kl_new")
        if rec.get("phase_end") and isinstance(v, (int, float)) and math.isfinite(v):
            out[int(rec["phase"])] = float(v)
    return out


def law_points(runs: Sequence[Run]) -> list[LawPoint]:
    """Every (run, phase) point with both numbers; runs without the probe contribute none."""
    pts = []
    for r in runs:
        s = r.summary
        if s is None or s.loss_matrix is None:
            continue
        kl = _phase_end_kl(s)
        doms = list(s.domains or [])
        tasks = set(s.stages.get("tasks") or [])
        L = s.loss_matrix
        sched = [p.domains for p in s.phases or []]
        objectives = s.stages.get("objectives") or ["lm"] * len(sched)
        for t in range(2, len(sched) + 1):
            if t not in kl:
                continue
            trained = {d for p in sched[:t - 1] for d in p}
            old = [i for i, d in enumerate(doms) if d in trained and d not in sched[t - 1] and d not in tasks]
            vals = [L[t][i] - L[t - 1][i] for i in old if L[t][i] is not None and L[t - 1][i] is not None]
            if vals:
                pts.append(LawPoint(r.run_id, t, objectives[t - 1], kl[t], sum(vals) / len(vals)))
    return pts


def spearman_with_ci(points: Sequence[LawPoint], seed: int = 0) -> dict[str, Any]:
    """rho, its percentile-bootstrap 95% CI over runs, and the counts; rho is None below 3 points or on ties
    that leave no variance."""
    n_runs = len({p.run_id for p in points})
    out: dict[str, Any] = {"n_points": len(points), "n_runs": n_runs, "rho": None, "lo": None, "hi": None}
    if len(points) < 3:
        return out
    x = np.array([p.kl_new for p in points])
    y = np.array([p.forgetting for p in points])
    if np.all(x == x[0]) or np.all(y == y[0]):
        return out
    out["rho"] = float(st.spearmanr(x, y).statistic)
    if n_runs < 3:
        return out
    runs = sorted({p.run_id for p in points})
    idx = {r: [i for i, p in enumerate(points) if p.run_id == r] for r in runs}
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(RESAMPLES):
        take = [i for r in rng.choice(runs, len(runs)) for i in idx[str(r)]]
        xs, ys = x[take], y[take]
        if np.all(xs == xs[0]) or np.all(ys == ys[0]):
            continue
        boot.append(float(st.spearmanr(xs, ys).statistic))
    if boot:
        out["lo"], out["hi"] = float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))
    return out
