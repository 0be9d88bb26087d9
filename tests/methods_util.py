"""Tiny runs for the method tests: a 2-block GPT on three small built-in domains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparsecl.data.domains import load_domains
from sparsecl.store.index import Index
from sparsecl.train.trainer import Trainer
from sparsecl.train.validate import checked_config

_DOMAINS: dict[Any, Any] = {}

SMALL = {"buffer_tokens": 17 * 30}
FAST_PARAMS: dict[str, dict[str, Any]] = {
    "ewc": {"fisher_samples": 4, "lam": 100.0}, "si": {"c": 1.0}, "replay": SMALL, "derpp": {**SMALL, "topk": 4},
    "agem": SMALL, "simreplay": {**SMALL, "probe_seqs": 4}, "genreplay": {"samples": 4}, "lwf": {},
    "sam": {"rho": 0.05}, "expand": {"train": "all"}, "naive": {}, "joint": {},
}
FAST_PARAMS.update({"sparseupdate": {"fraction": 0.2}, "rigl": {"interval": 1, "alpha": 0.3, "end": 1.0},
                    "align": {"lam": 1.0}})
"""Per method, parameters that keep a tiny run fast (small buffers, few Fisher samples)."""
FAST_PARAMS.update({"lora": {"rank": 4}, "olora": {"rank": 4}, "merge": {}})


def tiny_config(method: str, params: dict[str, Any] | None = None, density: float = 1.0, steps: int = 5,
                **extra: Any) -> Any:
    data = {
        "name": f"{method}-test", "seed": 0, "device": "cpu", "threads": 1,
        "model": {"n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 16},
        "data": {"domains": [{"name": n, "max_bytes": 20000} for n in ("arith", "dyck", "facts")]},
        "schedule": "arith,dyck,facts",
        "train": {"steps_per_phase": steps, "batch_size": 4, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 1,
                  "weight_decay": 0.1},
        "eval": {"every": 0, "batches": 1, "batch_size": 4},
        "sparse": {"density": density},
        "method": {"name": method, "params": params or {}},
    }
    data.update(extra)
    return checked_config(data)


def domains_for(cfg: Any) -> Any:
    key = cfg.model.block_size
    if key not in _DOMAINS:
        _DOMAINS[key] = load_domains(cfg.data, cfg.model.block_size)
    return _DOMAINS[key]


def make_trainer(cfg: Any, run_dir: Path) -> Trainer:
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(cfg, domains_for(cfg), run_dir, Index(run_dir.parent / f"{run_dir.name}.sqlite"), cfg.name,
                   progress_bar=False)
