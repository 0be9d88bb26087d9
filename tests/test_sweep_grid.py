"""Grid expansion: ids, groups, overrides, seeds, arms, errors; and the local executor's core plan."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from _sweep_tiny import tiny

from sparsecl.config import Arm
from sparsecl.errors import ConfigError, UserError
from sparsecl.sweep import expand, load_sweep
from sparsecl.sweep.executors import plan_local
from sparsecl.sweep.grid import format_value, key_labels


def _write(tmp_path: Path, data: dict) -> str:
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_cartesian_product_with_stable_ids_and_seed_free_groups(tmp_path: Path) -> None:
    path = _write(tmp_path, {**tiny(), "grid": {"sparse.density": [0.05, 1.0], "train.lr": [1e-3, 3e-3],
                                               "schedule": ["arith,facts", "facts,arith"], "seed": [0, 1]}})
    data, arms, grid = load_sweep(path, [])
    runs = expand(data, arms, grid)
    assert len(runs) == 2 * 2 * 2 * 2
    ids = [r.run_id for r in runs]
    assert len(set(ids)) == 16
    assert ids[0] == "schedule-arith+facts__density-0.05__lr-0.001__s0"
    assert ids[1] == "schedule-arith+facts__density-0.05__lr-0.001__s1"  # seed varies fastest
    r = next(r for r in runs if r.run_id == "schedule-facts+arith__density-1__lr-0.003__s1")
    assert r.config.sparse.density == 1.0 and r.config.train.lr == 0.003 and r.config.seed == 1
    assert [p.domains for p in r.config.schedule] == [["facts"], ["arith"]]
    assert r.group == "schedule-facts+arith__density-1__lr-0.003" == r.config.group
    assert r.config.name == r.run_id
    # groups collect exactly the runs that differ only in their seed
    groups: dict[str, list[int]] = {}
    for x in runs:
        groups.setdefault(x.group, []).append(x.config.seed)
    assert len(groups) == 8 and all(sorted(v) == [0, 1] for v in groups.values())
    # ids depend on a point's overrides only: another grid containing the same point gives the same id
    data2, arms2, grid2 = load_sweep(_write(tmp_path, {**tiny(), "grid": {
        "sparse.density": [1.0], "train.lr": [3e-3, 1e-2], "schedule": ["facts,arith"], "seed": [1, 7]}}), [])
    assert "schedule-facts+arith__density-1__lr-0.003__s1" in [x.run_id for x in expand(data2, arms2, grid2)]


def test_arms_cross_the_grid_and_seeds_list_is_a_seed_axis(tmp_path: Path) -> None:
    path = _write(tmp_path, {**tiny(), "seeds": [3, 4], "grid": {"sparse.density": [0.1, 0.5]},
                             "arms": [{"name": "naive", "overrides": {"method.name": "naive"}},
                                      {"name": "joint", "overrides": {"method.name": "joint"}}]})
    data, arms, grid = load_sweep(path, ["train.steps_per_phase=4"])
    runs = expand(data, arms, grid)
    assert [r.run_id for r in runs] == [
        "naive__density-0.1__s3", "naive__density-0.1__s4", "naive__density-0.5__s3", "naive__density-0.5__s4",
        "joint__density-0.1__s3", "joint__density-0.1__s4", "joint__density-0.5__s3", "joint__density-0.5__s4"]
    assert {r.config.method.name for r in runs[4:]} == {"joint"}
    assert all(p.steps == 4 for r in runs for p in r.config.schedule)  # command-line override reaches every run


def test_preset_key_in_sweep_file(tmp_path: Path) -> None:
    path = _write(tmp_path, {"preset": "ablation", "train": {"steps_per_phase": 5}})
    data, arms, grid = load_sweep(path, [])
    runs = expand(data, arms, grid)
    assert len(runs) == 18
    assert sorted({r.config.sparse.density for r in runs}) == [0.01, 0.05, 0.1, 0.2, 0.3, 1.0]
    assert all(r.config.train.steps_per_phase == 5 and r.config.method.name == "naive" for r in runs)


def test_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="grid.sparse.density"):
        load_sweep(_write(tmp_path, {**tiny(), "grid": {"sparse.density": 0.1}}), [])
    with pytest.raises(ConfigError, match="sparse.density.*grid point"):
        data, arms, grid = load_sweep(_write(tmp_path, {**tiny(), "grid": {"sparse.density": [0.1, 2.0]}}), [])
        expand(data, arms, grid)
    with pytest.raises(ConfigError, match="seeds"):
        load_sweep(_write(tmp_path, {**tiny(), "seeds": [0], "grid": {"seed": [1]}}), [])
    with pytest.raises(ConfigError, match="same run id"):
        expand(tiny(), [Arm("a", {}), Arm("a", {"seed": 1})], {})
    with pytest.raises(UserError, match="nothing to sweep"):
        load_sweep(None, [])


def test_labels_and_values() -> None:
    assert key_labels(["sparse.density", "train.lr"]) == {"sparse.density": "density", "train.lr": "lr"}
    assert key_labels(["a.x", "b.x"]) == {"a.x": "a-x", "b.x": "b-x"}
    assert format_value(0.05) == "0.05" and format_value(True) == "true" and format_value("er") == "er"
    h = format_value([{"domains": ["code"], "steps": 5}])
    assert len(h) == 8 and h == format_value([{"steps": 5, "domains": ["code"]}])


def test_plan_local_respects_cores() -> None:
    assert plan_local(None, None, cores=8) == (8, 1)
    assert plan_local(2, None, cores=8) == (2, 4)
    assert plan_local(None, 2, cores=8) == (4, 2)
    assert plan_local(2, 4, cores=8) == (2, 4)
    with pytest.raises(UserError, match="exceeds"):
        plan_local(3, 3, cores=8)
