"""Presets: the sweep presets expand on built-in domains; the scale presets have the parameter counts they
claim; `sparsecl run --preset quickstart` still works and a sweep preset sent to `run` says where to go."""

from __future__ import annotations

import pytest
import torch

from sparsecl.cli import main
from sparsecl.config import ConfigError, arm_configs, load_experiment, preset_names
from sparsecl.model.gpt import GPT
from sparsecl.sparse.topology import TOPOLOGIES
from sparsecl.sweep import expand, load_sweep


def test_presets_exist() -> None:
    assert {"ablation", "topology", "crossover", "scale", "quickstart"} <= set(preset_names())


def test_ablation_grid() -> None:
    runs = expand(*load_sweep(None, [], "ablation"))
    assert len(runs) == 18
    assert sorted({r.config.sparse.density for r in runs}) == [0.01, 0.05, 0.1, 0.2, 0.3, 1.0]
    assert {r.config.method.name for r in runs} == {"naive"} and {r.config.seed for r in runs} == {0, 1, 2}


def test_topology_grid_same_allocation_and_density() -> None:
    if not {"brf", "expander"} <= set(TOPOLOGIES):
        with pytest.raises(ConfigError, match="sparse.topology"):
            expand(*load_sweep(None, [], "topology"))
        pytest.skip("brf/expander topologies are not registered on this branch yet")
    runs = expand(*load_sweep(None, [], "topology"))
    assert {r.config.sparse.topology for r in runs} == {"er", "brf", "expander"}
    assert {(r.config.sparse.density, r.config.sparse.allocation) for r in runs} == {(0.05, "uniform")}


def test_crossover_has_20_plus_switches_with_a_recurring_core() -> None:
    runs = expand(*load_sweep(None, [], "crossover"))
    phases = [p.domains[0] for p in runs[0].config.schedule]
    switches = sum(a != b for a, b in zip(phases, phases[1:], strict=False))
    assert switches >= 20 and phases.count("code") >= 10
    assert {r.config.sparse.density for r in runs} == {0.1, 1.0}


def test_crossover_has_a_same_shape_and_an_iso_parameter_dense_reference() -> None:
    from sparsecl.sparse.matching import counts

    runs = {r.group: r.config for r in expand(*load_sweep(None, [], "crossover")) if r.config.seed == 0}
    assert set(runs) == {"er10", "dense-same", "dense-iso"}
    total, nonzero = counts(runs["er10"].model, runs["er10"].sparse)
    assert (total, nonzero) == (836_736, 128_944)
    assert counts(runs["dense-same"].model, runs["dense-same"].sparse) == (total, total)
    iso, _ = counts(runs["dense-iso"].model, runs["dense-iso"].sparse)
    assert iso == 129_456 and abs(iso - nonzero) / nonzero < 0.005  # within the report's 3% iso tolerance


@pytest.mark.parametrize("arm,target", [("m100", 100e6), ("m500", 500e6), ("b1", 1e9)])
def test_scale_parameter_counts(arm: str, target: float) -> None:
    data, arms, grid = load_sweep(None, [], "scale")
    runs = [r for r in expand(data, arms, grid) if r.run_id.startswith(f"{arm}__")]
    assert len(runs) == 9 and {r.config.device for r in runs} == {"cuda"}
    with torch.device("meta"):
        model = GPT(runs[0].config.model)
    n = sum(p.numel() for p in model.parameters())  # tied embeddings are counted once
    assert abs(n - target) / target < 0.03, n


def test_quickstart_still_runs_and_sweep_presets_point_to_sweep(capsys: pytest.CaptureFixture) -> None:
    data, arms = load_experiment(None, [], "quickstart")
    assert [c.name for c in arm_configs(data, arms)] == ["dense", "er10"]
    assert main(["run", "--preset", "ablation", "--out", "/nonexistent/x", "--no-progress"]) == 2
    assert "sparsecl sweep" in capsys.readouterr().err
