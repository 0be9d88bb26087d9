"""torchrun data parallelism (CPU, gloo): N ranks train what one process trains, write once, resume exactly."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import MULTIPROC
from dist_util import torchrun, write_config
from safetensors.torch import load_file

from sparsecl.config import build_config
from sparsecl.errors import ConfigError
from sparsecl.train.parallel import Parallel, check_config
from sparsecl.train.runner import resume, run_experiment

TOL = 1e-5


def small(tiny: Any, **extra: Any) -> dict[str, Any]:
    """Two phases of 6 steps, checkpoints every 2 steps, sparse so that the mask invariant means something."""
    return tiny(**{"schedule": "arith,facts", "train.steps_per_phase": 6, "eval.every": 3, "probes": [],
                   "sparse.density": 0.3, "checkpoint_every": 2, "checkpoint_resume_state": "every", **extra})


def loss_matrix(out: Path, name: str = "tiny") -> torch.Tensor:
    return torch.tensor(json.loads((out / name / "summary.json").read_text())["loss_matrix"], dtype=torch.float64)


def assert_mask_invariant(run_dir: Path) -> None:
    """Weights and AdamW moments outside every saved mask are exactly 0 in every saved checkpoint."""
    tags = sorted(p.name[:-len(".resume.safetensors")] for p in (run_dir / "ckpt").glob("*.resume.safetensors"))
    assert tags
    for tag in tags:
        model = load_file(run_dir / "ckpt" / f"{tag}.safetensors")
        resume_state = load_file(run_dir / "ckpt" / f"{tag}.resume.safetensors")
        masks = {k[len("model."):-len(".mask")]: v.bool() for k, v in model.items() if k.endswith(".mask")}
        assert masks
        for mod, m in masks.items():
            for t in (model[f"model.{mod}.weight"], resume_state[f"optim.{mod}.weight.exp_avg"],
                      resume_state[f"optim.{mod}.weight.exp_avg_sq"]):
                assert float(t[~m].abs().max()) == 0.0, (tag, mod)


def test_rows_split_the_global_batch() -> None:
    """Micro-step m, rank r of (accum 2, 2 ranks) over 8 rows: every row exactly once, micro-step major."""
    seen = [list(range(8))[Parallel(r, 2, "ddp", 2).rows(8, m)] for m in range(2) for r in range(2)]
    assert seen == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert Parallel(0, 1, "ddp", 2).micro_rows(8, 1) == slice(4, 8)


def test_indivisible_batch_and_unsupported_methods_are_refused(tiny: Any) -> None:
    with pytest.raises(ConfigError, match="not divisible by ranks"):
        check_config(build_config(tiny(**{"train.batch_size": 6, "train.grad_accum": 2})), world=2)
    with pytest.raises(ConfigError, match="'agem' does not train under DDP"):
        check_config(build_config(tiny(**{"method.name": "agem"})), world=2)
    with pytest.raises(ConfigError, match="probes copy the model"):
        check_config(build_config(tiny(**{"train.parallel": "fsdp", "probes": ["dormant"]})), world=2)
    check_config(build_config(tiny(**{"method.name": "agem"})), world=1)  # one process: every method


def test_grad_accum_equals_the_full_batch(tmp_path: Path, tiny: Any) -> None:
    run_experiment([build_config(small(tiny))], tmp_path / "full", progress_bar=False)
    run_experiment([build_config(small(tiny, **{"train.grad_accum": 2}))], tmp_path / "accum", progress_bar=False)
    a, b = loss_matrix(tmp_path / "full"), loss_matrix(tmp_path / "accum")
    assert float((a - b).abs().max()) < TOL
    assert_mask_invariant(tmp_path / "accum" / "tiny")


@MULTIPROC
def test_ddp_two_ranks_equal_one_process_and_resume_after_a_killed_rank(tmp_path: Path, tiny: Any) -> None:
    """The same command with and without torchrun trains the same examples: equal loss matrices; rank 0 writes
    every evaluation row once. Rank 1 killed after step 3: resume under torchrun, and on one process, equal."""
    cfg = small(tiny)
    run_experiment([build_config(cfg)], tmp_path / "one", progress_bar=False)
    ref = loss_matrix(tmp_path / "one")
    conf = write_config(cfg, tmp_path / "c.yaml")

    p = torchrun(2, "run", str(conf), "--out", str(tmp_path / "two"), "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("validation loss") == 1  # rank 0 reports
    assert float((loss_matrix(tmp_path / "two") - ref).abs().max()) < TOL
    summary = json.loads((tmp_path / "two" / "tiny" / "summary.json").read_text())
    assert (summary["ranks"], summary["parallel"]) == (2, "ddp")
    count = "SELECT COUNT(*) FROM evals"
    n_one = sqlite3.connect(tmp_path / "one" / "index.sqlite").execute(count).fetchone()[0]
    assert sqlite3.connect(tmp_path / "two" / "index.sqlite").execute(count).fetchone()[0] == n_one
    assert_mask_invariant(tmp_path / "two" / "tiny")

    p = torchrun(2, "run", str(conf), "--out", str(tmp_path / "killed"), "--no-progress",
                 env={"SPARSECL_KILL_AT_STEP": "3", "SPARSECL_KILL_RANK": "1"})
    assert p.returncode != 0
    assert json.loads((tmp_path / "killed" / "tiny" / "ckpt" / "latest.json").read_text()) == {"tag": "step-0000002"}
    shutil.copytree(tmp_path / "killed", tmp_path / "killed1")
    p = torchrun(2, "resume", str(tmp_path / "killed"), "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    assert float((loss_matrix(tmp_path / "killed") - ref).abs().max()) < TOL
    resume(tmp_path / "killed1", progress_bar=False)  # 2 ranks -> 1 process
    assert float((loss_matrix(tmp_path / "killed1") - ref).abs().max()) < TOL


@MULTIPROC
def test_fsdp_two_ranks_train_keep_the_mask_invariant_and_equal_one_process(tmp_path: Path, tiny: Any) -> None:
    cfg = small(tiny)
    run_experiment([build_config(cfg)], tmp_path / "one", progress_bar=False)
    conf = write_config(small(tiny, **{"train.parallel": "fsdp"}), tmp_path / "c.yaml")
    p = torchrun(2, "run", str(conf), "--out", str(tmp_path / "fsdp"), "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    L = loss_matrix(tmp_path / "fsdp")
    assert L[1][0] < L[0][0] - 0.3  # it trains
    assert float((L - loss_matrix(tmp_path / "one")).abs().max()) < TOL
    assert_mask_invariant(tmp_path / "fsdp" / "tiny")
    assert json.loads((tmp_path / "fsdp" / "tiny" / "summary.json").read_text())["parallel"] == "fsdp"


@MULTIPROC
def test_lwf_under_ddp_equals_one_process(tmp_path: Path, tiny: Any) -> None:
    """LwF keeps a deep copy of the model as its teacher: every rank keeps the same one."""
    cfg = small(tiny, **{"method.name": "lwf", "checkpoint_every": 0})
    run_experiment([build_config(cfg)], tmp_path / "one", progress_bar=False)
    p = torchrun(2, "run", str(write_config(cfg, tmp_path / "c.yaml")), "--out", str(tmp_path / "two"),
                 "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    assert float((loss_matrix(tmp_path / "two") - loss_matrix(tmp_path / "one")).abs().max()) < TOL


def test_activation_checkpointing_changes_nothing_but_memory(tmp_path: Path, tiny: Any) -> None:
    cfg = small(tiny, **{"checkpoint_every": 0, "schedule": "arith"})
    run_experiment([build_config(cfg)], tmp_path / "plain", progress_bar=False)
    run_experiment([build_config({**cfg, "train": {**cfg["train"], "activation_checkpointing": True}})],
                   tmp_path / "ac", progress_bar=False)
    assert float((loss_matrix(tmp_path / "ac") - loss_matrix(tmp_path / "plain")).abs().max()) < TOL
