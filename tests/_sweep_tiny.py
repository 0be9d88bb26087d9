"""Shared tiny configs for the sweep, report and tracking tests (imported, not a test module)."""

from __future__ import annotations

import copy
from typing import Any

from sparsecl.metrics.summary import TIMING_KEYS  # noqa: F401 - re-exported for the sweep tests

TINY: dict[str, Any] = {
    "seed": 0,
    "threads": 1,
    "device": "cpu",
    "model": {"n_layer": 1, "n_head": 2, "d_model": 16, "block_size": 16},
    "schedule": "arith,facts,code",
    "train": {"steps_per_phase": 6, "batch_size": 4, "warmup_steps": 1},
    "eval": {"every": 3, "batches": 1, "batch_size": 4},
}


def tiny(**changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(TINY)
    d.update(changes)
    return d


def metrics_only(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in TIMING_KEYS}
