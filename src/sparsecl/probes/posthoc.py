"""Probes after the fact: every saved phase checkpoint of a run, the same numbers the trainer would record."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from sparsecl.config import build_config
from sparsecl.data.domains import load_domains
from sparsecl.data.stream import domain_val_windows
from sparsecl.data.tokenizer import saved_tokenizer
from sparsecl.errors import UserError
from sparsecl.methods import build_method
from sparsecl.metrics.table import _grid
from sparsecl.probes import resolve_probe_names
from sparsecl.probes.context import PhaseStates, ProbeContext
from sparsecl.probes.run import learned_phases, run_probes
from sparsecl.sparse.build import build_model
from sparsecl.store.atomic import atomic_write_json
from sparsecl.store.checkpoint import load_resume_tensors, model_path, phase_tag, split_prefix


def probe_run(run_dir: Path, names: list[str] | None = None, device: str = "cpu") -> dict[str, Any]:
    """Probe phase checkpoints 1..T of ``run_dir``; returns what probes.json holds (also written, atomically)."""
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"'{run_dir}' is not a run folder (no config.yaml); pass one folder under `sparsecl run --out`")
    cfg = build_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
    chosen = resolve_probe_names(names if names is not None else cfg.probes, field="--probes")
    if not chosen:
        raise UserError("no probes chosen; pass e.g. --probes all")
    ckpt = run_dir / "ckpt"
    phases = [j for j in range(1, len(cfg.schedule) + 1) if model_path(ckpt, phase_tag(j)).is_file()]
    if not phases:
        raise UserError(f"'{run_dir}' has no phase checkpoints (ckpt/phase-NNN.safetensors); train it first")
    dev = torch.device(device)
    domains = load_domains(cfg.data, cfg.model.block_size, saved_tokenizer(run_dir, cfg.data.tokenizer))
    windows = domain_val_windows({n: d.val for n, d in domains.items()}, cfg.seed, cfg.eval.sample_tokens,
                                 cfg.model.block_size)
    method = build_method(cfg.method.name, cfg.method.params)
    if method.grows_model:
        raise UserError(f"'{run_dir}' used method '{method.name}', whose checkpoints grow phase by phase; post-hoc "
                        f"probes need one architecture: set probes=... in the run's config to measure them during "
                        f"training")
    if not method.plain_checkpoints():
        raise UserError(f"'{run_dir}' used method '{cfg.method.name}' with adapters kept per phase, which its phase "
                        f"checkpoints hold beside the base weights; post-hoc probes read the base model only: set "
                        f"probes=... in the run's config to measure them during training")
    with torch.random.fork_rng(devices=[]):
        model, _, _ = build_model(cfg, dev)
    states = PhaseStates(ckpt, cfg)
    entries: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    for j in phases:
        state = states(j)
        own = model.state_dict()
        if state is None or any(own.get(k) is not None and own[k].shape != v.shape for k, v in state.items()):
            raise UserError(f"checkpoint {ckpt / phase_tag(j)}.safetensors is missing or does not fit the model "
                            f"that '{run_dir}/config.yaml' builds; restore the run folder as it was written")
        model.load_state_dict({k: v.to(dev) for k, v in state.items()}, strict=False)
        step = int(json.loads((ckpt / f"{phase_tag(j)}.json").read_text())["step"])
        ctx = ProbeContext(model=model, cfg=cfg, windows=windows, phase=j, step=step,
                           current=list(cfg.schedule[j - 1].domains), learned_phase=learned_phases(cfg, method, j),
                           states=states, device=dev, phase_step=cfg.schedule[j - 1].steps,
                           optim_state=functools.partial(_optim_state, ckpt, j))
        t: dict[str, float] = {}
        entries.append({"phase": j, "step": step, "phase_step": cfg.schedule[j - 1].steps, "phase_end": True,
                        "values": run_probes(ctx, chosen, t)})
        for k, v in t.items():
            timings[k] = timings.get(k, 0.0) + v
    out = {"run": cfg.name, "probes_run": chosen, "computed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "seconds": {k: round(v, 3) for k, v in timings.items()}, "probes": entries}
    atomic_write_json(run_dir / "probes.json", out)
    return out


def _optim_state(ckpt: Path, phase: int) -> dict[str, torch.Tensor]:
    return split_prefix(load_resume_tensors(ckpt, phase_tag(phase)), "optim.")  # {} where pruned


def headline_table(entries: list[dict[str, Any]]) -> str:
    """Rows probe.key for headline keys (no '/'), one column per probed phase."""
    keys: list[tuple[str, str]] = []
    for e in entries:
        for p, vals in e["values"].items():
            for k in vals:
                if "/" not in k and (p, k) not in keys:
                    keys.append((p, k))
    header = ["probe.key"] + [f"phase {e['phase']}" + ("" if e.get("phase_end", True) else f"@{e['step']}")
                              for e in entries]
    rows = [[f"{p}.{k}"] + [_fmt(e["values"].get(p, {}).get(k)) for e in entries] for p, k in keys]
    return _grid(header, rows)


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}"
