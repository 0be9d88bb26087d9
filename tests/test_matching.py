"""Iso-parameter matching and the `sparsecl topology` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sparsecl.cli import main
from sparsecl.config import ModelConfig, SparseConfig
from sparsecl.model.gpt import GPT
from sparsecl.sparse.apply import apply_sparsity, structural_counts
from sparsecl.sparse.matching import resolve_matching

torch.set_num_threads(1)


@pytest.mark.parametrize("density,topology,allocation,backend", [
    (0.05, "er", "uniform", "masked"), (0.1, "er", "erk", "csr"), (0.2, "brf", "uniform", "csr"),
    (0.5, "nm", "uniform", "masked"), (0.1, "expander", "uniform", "csr"),
])
def test_params_matching_hits_the_dense_nonzero_count(density: float, topology: str, allocation: str,
                                                      backend: str) -> None:
    base = ModelConfig(n_layer=2, n_head=4, d_model=48, block_size=32)
    sparse = SparseConfig(density=density, topology=topology, allocation=allocation, backend=backend,  # type: ignore[arg-type]
                          matching="params")
    match = resolve_matching(base, sparse)
    dense_params = GPT(base).param_count()
    assert match.dense_reference_params == dense_params
    assert match.model.d_model > base.d_model and match.model.d_model % base.n_head == 0
    assert match.model.n_head == base.n_head
    torch.manual_seed(0)
    model = GPT(match.model)
    apply_sparsity(model, sparse, 0)
    _, nonzero = structural_counts(model)
    assert abs(nonzero - dense_params) / dense_params <= 0.02
    ratio = match.model.hidden / match.model.d_model
    assert 3.5 <= ratio <= 4.5  # the MLP keeps roughly its 4x shape: widths grow together


def test_shape_matching_keeps_widths() -> None:
    base = ModelConfig(n_layer=2, n_head=4, d_model=48, block_size=32)
    match = resolve_matching(base, SparseConfig(density=0.1, matching="shape"))
    assert match.model == base
    assert match.nonzero_params < match.dense_reference_params


def test_topology_command_prints_and_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "topo.json"
    rc = main(["topology", "model.n_layer=1", "model.d_model=64", "sparse.density=0.1", "sparse.topology=brf",
               "sparse.brf_r=0", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "blocks.0.mlp.up.up" in text and "ramanujan" in text
    rep = json.loads(out.read_text())
    assert rep["topology"] == "brf" and rep["density"] == pytest.approx(0.1, abs=1e-3)
    up = next(r for r in rep["layers"] if r["name"] == "blocks.0.mlp.up.up")
    assert up["shape"] == [256, 64] and up["dead_rows"] == 0
    assert up["spectral_gap"] < 0.2  # a band has almost no spectral gap


def test_topology_command_rejects_bad_input(capsys: pytest.CaptureFixture) -> None:
    assert main(["topology", "sparse.topology=nm", "sparse.density=0.3"]) == 2
    assert "sparse.density" in capsys.readouterr().err
