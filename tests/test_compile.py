"""train.compile (TorchDynamo + Inductor's CPU backend, which builds C++ kernels with g++): a compiled run
trains what the eager run trains, keeps the mask invariant on the masked and csr backends, resumes exactly.

Compiling is the cost here (tens of seconds per backend on a cold Inductor cache: a training graph and an
evaluation graph of the block, or of the pieces between csr layers); everything else reuses those graphs, so
each backend compiles once and every assertion shares its runs. The tolerance is fp32's: Inductor fuses and
reorders reductions (layer norms, softmax), which changes float rounding, not the arithmetic; measured ≤ 1e-6
on the loss matrices of this 2 x 6-step run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from dist_util import write_config
from safetensors.torch import load_file
from test_conformance import _check_invariant, _masks
from test_parallel import loss_matrix, small
from torch._dynamo.utils import counters

from sparsecl.cli import main
from sparsecl.config import build_config
from sparsecl.train import trainer as trainer_mod
from sparsecl.train.runner import resume, run_experiment

TOL = 1e-5
needs_cxx = pytest.mark.skipif(shutil.which("g++") is None, reason="Inductor's CPU backend needs g++")


class Killed(Exception):
    pass


def assert_saved_invariant(run_dir: Path) -> None:
    """Every saved checkpoint: weights 0 off their masks, AdamW moments 0 there too (masked) or one per kept
    weight (csr's values), by the conformance suite's check."""
    tags = sorted(p.name[:-len(".resume.safetensors")] for p in (run_dir / "ckpt").glob("*.resume.safetensors"))
    assert len(tags) >= 4
    for tag in tags:
        model = load_file(run_dir / "ckpt" / f"{tag}.safetensors")
        masks = _masks(model)
        assert masks and _check_invariant(model, masks, tag) == len(masks)
        resume_state = load_file(run_dir / "ckpt" / f"{tag}.resume.safetensors")
        assert _check_invariant(resume_state, masks, tag) >= 2 * len(masks)


@needs_cxx
@pytest.mark.parametrize("backend", ["masked", "csr"])
def test_compiled_run_equals_eager_keeps_the_mask_invariant_and_resumes_exactly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    eager = small(tiny_config, **{"sparse.backend": backend})
    compiled = {**eager, "train": {**eager["train"], "compile": True}}
    run_experiment([build_config(eager)], tmp_path / "eager", progress_bar=False)
    graphs = counters["stats"]["unique_graphs"]
    run_experiment([build_config(compiled)], tmp_path / "compiled", progress_bar=False)
    assert counters["stats"]["unique_graphs"] > graphs  # Dynamo did compile
    L = loss_matrix(tmp_path / "compiled")
    assert L[1][0] < L[0][0] - 0.3  # it trains
    assert float((L - loss_matrix(tmp_path / "eager")).abs().max()) < TOL
    assert_saved_invariant(tmp_path / "compiled" / "tiny")
    topo = json.loads((tmp_path / "compiled" / "tiny" / "topology.json").read_text())
    assert {row["backend"] for row in topo["layers"]} == {backend}

    def kill(step: int) -> None:
        if step == 9:  # phase 2, one step after its checkpoint at step 8
            raise Killed

    monkeypatch.setattr(trainer_mod, "_maybe_simulate_kill", kill)
    with pytest.raises(Killed):
        run_experiment([build_config(compiled)], tmp_path / "cut", progress_bar=False)
    monkeypatch.setattr(trainer_mod, "_maybe_simulate_kill", lambda step: None)
    assert json.loads((tmp_path / "cut" / "tiny" / "ckpt" / "latest.json").read_text()) == {"tag": "step-0000008"}
    resume(tmp_path / "cut", progress_bar=False)
    assert torch.equal(loss_matrix(tmp_path / "cut"), L)


def test_compile_without_a_cpu_compiler_is_refused_before_any_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("CXX", "no-such-cxx")
    conf = write_config(tiny_config(), tmp_path / "c.yaml")
    code = main(["run", str(conf), "train.compile=true", "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "'train.compile'" in err and "no-such-cxx" in err, err
    assert not (tmp_path / "out").exists()
