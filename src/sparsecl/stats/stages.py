"""SFT against RL from the same pretrained model (issue 10): forgetting of the pretraining domains at equal
compute and at matched new-task accuracy.

Two runs pair when they share seed, density, method and schedule up to the last phase's objective, which is
``sft`` in one and ``rl`` in the other, and its learning rate (each objective may have its own); identical
earlier phases with one seed give one checkpoint (CPU runs are deterministic). Forgetting is the mean over the
pretraining LM domains of the loss increase since the end of the pretraining (phase T-1), + = forgot. *Equal
compute*: both at the end of the last phase (equal optimizer steps; RL also spends its sampling). *Matched
accuracy*: SFT at its first evaluation from the end of pretraining on whose task accuracy reaches RL's final
accuracy (its last one if it never does: 'not reached').
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sparsecl.stats.analysis import Run
from sparsecl.stats.intervals import t_interval


def _key(r: Run) -> str | None:
    c = r.config
    sched = c.get("schedule") or []
    if not sched or sched[-1].get("objective") not in ("sft", "rl"):
        return None
    head = [*sched[:-1], {k: v for k, v in sched[-1].items() if k not in ("objective", "lr")}]
    return json.dumps([c.get("seed"), c.get("sparse", {}).get("density"), c.get("method", {}).get("name"), head],
                      sort_keys=True)


def _forgetting(loss: dict[str, float], base: dict[str, float], doms: list[str]) -> float:
    return sum(loss[d] - base[d] for d in doms) / len(doms)


def pair_measures(sft: Run, rl: Run) -> dict[str, Any] | None:
    """The paired numbers of one seed, or None when a summary lacks what they need."""
    if sft.summary is None or rl.summary is None:
        return None
    s, evals_sft, evals_rl = sft.summary, sft.summary.stages.get("stage_evals"), rl.summary.stages.get("stage_evals")
    tasks = s.stages.get("tasks")
    if not evals_sft or not evals_rl or not tasks:
        return None
    T = len(s.phases)
    task = s.phases[-1].domains[0]
    pre = [d for p in s.phases[:-1] for d in p.domains if d not in tasks]
    pre = list(dict.fromkeys(pre))
    if not pre:
        return None
    base = [p for p in evals_sft if p["phase"] == T - 1][-1]  # the end of pretraining (sorted by step)
    last = {"sft": evals_sft[-1], "rl": evals_rl[-1]}
    acc_rl = last["rl"]["task_accuracy"][task]
    inside = [base, *(p for p in evals_sft if p["phase"] == T)]  # the pretrained model may already match
    reached = [p for p in inside if p["task_accuracy"][task] >= acc_rl]
    matched = reached[0] if reached else inside[-1]
    return {"acc_sft": last["sft"]["task_accuracy"][task], "acc_rl": acc_rl,
            "forget_sft": _forgetting(last["sft"]["loss"], base["loss"], pre),
            "forget_rl": _forgetting(last["rl"]["loss"], base["loss"], pre),
            "acc_sft_matched": matched["task_accuracy"][task], "matched_step": matched["phase_step"],
            "reached": bool(reached), "forget_sft_matched": _forgetting(matched["loss"], base["loss"], pre)}


def stage_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per (density, method): means with 95% t intervals over paired seeds of SFT - RL forgetting."""
    by: dict[str, dict[str, Run]] = {}
    for r in runs:
        k = _key(r)
        if k is not None and r.summary is not None:
            by.setdefault(k, {})[r.config["schedule"][-1]["objective"]] = r
    cells: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for k, pair in by.items():
        if {"sft", "rl"} <= pair.keys():
            m = pair_measures(pair["sft"], pair["rl"])
            if m is not None:
                _, dens, method, _ = json.loads(k)
                cells.setdefault((float(dens if dens is not None else 1.0), str(method)), []).append(m)
    rows = []
    for (dens, method), ms in sorted(cells.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        row: dict[str, Any] = {"density": dens, "method": method, "n": len(ms),
                               "reached": sum(m["reached"] for m in ms)}
        for key in ("acc_sft", "acc_rl", "acc_sft_matched", "forget_sft", "forget_rl", "forget_sft_matched"):
            row[key] = t_interval([m[key] for m in ms])
        row["diff_equal_compute"] = t_interval([m["forget_sft"] - m["forget_rl"] for m in ms])
        row["diff_matched"] = t_interval([m["forget_sft_matched"] - m["forget_rl"] for m in ms])
        rows.append(row)
    return rows
