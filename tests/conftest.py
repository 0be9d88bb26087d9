"""Shared test set-up: one CPU thread, passive OpenMP waits, a tiny run config, and the xdist groups."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_CACHE = tempfile.mkdtemp(prefix="sparsecl-test-cache-")
os.environ["SPARSECL_CACHE_DIR"] = _CACHE  # token caches of the whole session (CLI subprocesses inherit it)
atexit.register(shutil.rmtree, _CACHE, True)

from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """A run that trains in a few seconds: 2 layers, 32 wide, 3 small built-in domains."""
    cfg: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "device": "cpu",
        "threads": 1,
        "model": {"n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 32},
        "data": {"domains": [{"name": d, "max_bytes": 30_000} for d in ("arith", "facts", "cipher")]},
        "schedule": "arith,facts,cipher",
        "train": {"steps_per_phase": 12, "batch_size": 4, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2},
        "eval": {"every": 5, "batches": 2, "batch_size": 4},
    }
    for k, v in overrides.items():
        from sparsecl.config import set_dotted

        set_dotted(cfg, k, v)
    return cfg


@pytest.fixture
def tiny() -> Any:
    return tiny_config


# Tests that start several processes each (torchrun ranks, a Ray cluster's nodes and runs). Under pytest-xdist they
# run one after another on one worker (tests/_xdist_groups.py, which finds them by this decorator's name);
# `pytest -m "not multiproc"` leaves them out.
MULTIPROC = pytest.mark.multiproc


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "multiproc: starts several processes (torchrun ranks, a Ray cluster)")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``pytest -n N``: our work units (see _xdist_groups) in place of xdist's default ``--dist load``."""
    if config.getvalue("dist") != "load":
        return None  # another --dist asked for on the command line
    from _xdist_groups import GroupScheduling  # optional: imports pytest-xdist, which only runs this hook

    return GroupScheduling(config, log)
