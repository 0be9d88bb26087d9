"""Running the chosen probes at one probe point, from the trainer or after the fact."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import torch

from sparsecl.config import RunConfig
from sparsecl.probes import PROBES, resolve_probe_names
from sparsecl.probes.context import PhaseStates, ProbeContext
from sparsecl.store.checkpoint import optimizer_tensors

if TYPE_CHECKING:
    from sparsecl.train.trainer import Trainer


def learned_phases(cfg: RunConfig, method: Any, upto: int) -> dict[str, int]:
    """Domain -> first phase (<= upto) in which the method counts it as trained, in domain order."""
    scheduled = [d for d in cfg.domain_names if any(d in p.domains for p in cfg.schedule)]
    first: dict[str, int] = {}
    for j in range(1, upto + 1):
        for d in method.counts_as_trained(j, list(cfg.schedule[j - 1].domains), scheduled):
            first.setdefault(d, j)
    return {d: first[d] for d in cfg.domain_names if d in first}


def run_probes(ctx: ProbeContext, names: list[str], timings: dict[str, float] | None = None
               ) -> dict[str, dict[str, float]]:
    """probe -> {key: value}, in eval mode and float32, without touching the global RNG or the model's grads.

    Non-finite values (e.g. a ratio with a zero denominator) are left out rather than stored.
    """
    model = ctx.model
    was_training = model.training
    model.eval()
    out: dict[str, dict[str, float]] = {}
    devices = [ctx.device] if ctx.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.autocast(ctx.device.type, enabled=False):
            for name in names:
                t0 = time.perf_counter()
                vals = PROBES[name].fn(ctx)
                if timings is not None:
                    if ctx.device.type == "cuda":
                        torch.cuda.synchronize(ctx.device)
                    timings[name] = time.perf_counter() - t0
                out[name] = {k: float(v) for k, v in vals.items() if math.isfinite(float(v))}
    finally:
        model.train(was_training)
    return out


def to_rows(phase: int, step: int, results: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    return [{"phase": phase, "step": step, "probe": p, "key": k, "value": v}
            for p, vals in results.items() for k, v in vals.items()]


def _optim_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {} if trainer.optimizer is None else optimizer_tensors(trainer.optimizer, trainer.param_names)


def probe_trainer(trainer: Trainer, phase: int, phase_end: bool) -> None:
    """Run the configured probes on the trainer's model; rows go to the index and into the run's progress
    (saved with every checkpoint, so they survive a resume)."""
    cfg = trainer.cfg
    names = resolve_probe_names(cfg.probes)
    if not names:
        return
    p = trainer.progress
    ctx = ProbeContext(model=trainer.model, cfg=cfg, windows=trainer.val, phase=phase, step=p.step,
                       current=list(cfg.schedule[phase - 1].domains),
                       learned_phase=learned_phases(cfg, trainer.method, phase),
                       states=PhaseStates(trainer.ckpt_dir, cfg, like=trainer.model), device=trainer.device,
                       phase_step=p.phase_step,
                       optim_state=lambda: _optim_state(trainer))
    results = run_probes(ctx, names)
    trainer.index.add_probes(trainer.run_id, to_rows(phase, p.step, results))
    p.probes.append({"phase": phase, "step": p.step, "phase_step": p.phase_step, "phase_end": phase_end,
                     "values": results})
