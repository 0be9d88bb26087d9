"""Probes inside runs: config validation, rows in the index and summary, `sparsecl probe` reproducing the
trainer's numbers, and probe results surviving a kill and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsecl.cli import main
from sparsecl.config import DEFAULT_PROBES, build_config
from sparsecl.errors import ConfigError
from sparsecl.probes import PROBES
from sparsecl.store.index import Index
from sparsecl.train.runner import run_experiment
from sparsecl.train.validate import checked_config

torch.set_num_threads(1)

TINY = {"name": "t", "threads": 1, "device": "cpu", "schedule": "arith,facts",
        "model": {"n_layer": 1, "n_head": 2, "d_model": 16, "block_size": 16},
        "train": {"steps_per_phase": 6, "batch_size": 4, "warmup_steps": 1},
        "eval": {"every": 0, "batches": 1, "batch_size": 8},
        "probes": ["all"], "probe_every": 3,
        "probe": {"lanczos_steps": 6, "hutchinson_samples": 16, "noise_batch": 4, "plasticity_steps": 2,
                  "plasticity_batch": 2, "curvature_batch": 2, "batch_size": 4}}


def tiny(**over: object) -> dict:
    d = json.loads(json.dumps(TINY))
    d.update(over)
    return d


def test_config_probe_names_and_knobs() -> None:
    with pytest.raises(ConfigError) as e:
        checked_config(tiny(probes=["residual_norm", "nope"]))  # probe names are the train layer's check
    assert "probes" in str(e.value) and "nope" in str(e.value) and "hessian_eigs" in str(e.value)
    assert build_config(tiny(probes="dormant,lmc")).probes == ["dormant", "lmc"]
    cfg = build_config({"schedule": "arith"})
    assert cfg.probes == DEFAULT_PROBES and cfg.probe_every == 0
    assert not {"hessian_eigs", "hessian_trace"} & set(DEFAULT_PROBES)
    assert set(DEFAULT_PROBES) < set(PROBES)
    with pytest.raises(ConfigError, match="probe.hutchinson_samples"):
        build_config(tiny(probe={"hutchinson_samples": 4}))
    with pytest.raises(ConfigError, match="probe.lmc_points"):
        build_config(tiny(probe={"lmc_points": 2}))
    with pytest.raises(ConfigError, match="probe_every"):
        build_config(tiny(probe_every=-1))


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs")
    cfg = build_config(tiny(sparse={"density": 0.5}))
    summary = run_experiment([cfg], out, progress_bar=False)[0]
    return out, summary


def test_probe_rows_in_index_and_summary(sparse_run: tuple[Path, dict]) -> None:
    out, summary = sparse_run
    entries = summary.probes
    assert [(e["phase"], e["step"], e["phase_end"]) for e in entries] == [(1, 3, False), (1, 6, True),
                                                                         (2, 9, False), (2, 12, True)]
    idx = Index(out / "index.sqlite")
    rows = idx.probes("t")
    idx.close()
    assert {r["probe"] for r in rows} == set(PROBES)
    n_values = sum(len(v) for e in entries for v in e["values"].values())
    assert len(rows) == n_values
    by = {(r["step"], r["probe"], r["key"]): r["value"] for r in rows}
    for e in entries:
        for p, vals in e["values"].items():
            for k, v in vals.items():
                assert by[(e["step"], p, k)] == v
    end1, end2 = entries[1]["values"], entries[3]["values"]
    assert all(v > 0 for k, v in end1["residual_norm"].items())
    assert end1["lmc"]["new_barrier_mean"] >= 0 and "old_barrier_mean" in end2["lmc"]
    assert end2["param_drift"]["total_rel"] > 0
    assert "interference" not in end1 or not end1["interference"]  # no old domain in phase 1
    assert -1 <= end2["interference"]["arith/cos"] <= 1
    assert 0 <= end2["repr_drift"]["arith/learned/L1/drift"] <= 1
    assert end2["hessian_trace"]["trace_se"] > 0 and end2["hessian_eigs"]["lambda_max"] >= \
        end2["hessian_eigs"]["lambda_min"]
    for tau in ("tau0", "tau0.025", "tau0.1"):
        assert 0 <= end2["dormant"][tau] <= 1
    assert end2["dormant"]["tau0"] <= end2["dormant"]["tau0.1"]
    assert "empirical_trace" in end2["fisher"] and end2["noise_scale"]["trace_sigma"] > 0
    assert end2["plasticity"]["ratio"] > 0


def test_probe_command_reproduces_trainer_values(sparse_run: tuple[Path, dict], capsys: pytest.CaptureFixture
                                                 ) -> None:
    out, summary = sparse_run
    assert main(["probe", str(out / "t"), "--probes", "all"]) == 0
    printed = capsys.readouterr().out
    assert "hessian_eigs.lambda_max" in printed and "phase 2" in printed
    res = json.loads((out / "t" / "probes.json").read_text())
    trainer_ends = [e for e in summary.probes if e["phase_end"]]
    assert [e["phase"] for e in res["probes"]] == [1, 2]
    for mine, theirs in zip(res["probes"], trainer_ends, strict=True):
        assert mine["step"] == theirs["step"]
        for p, vals in theirs["values"].items():
            for k, v in vals.items():
                assert mine["values"][p][k] == pytest.approx(v, rel=1e-5, abs=1e-7), (p, k)
    assert main(["probe", str(out / "t"), "--probes", "bogus"]) == 2


def test_probes_survive_kill_and_resume(tmp_path: Path) -> None:
    cfg = tiny(probes=["residual_norm", "param_drift", "lmc", "interference"], checkpoint_every=2)
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    env = {**os.environ, "SPARSECL_KILL_AT_STEP": "9", "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [sys.executable, "-m", "sparsecl", "run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "a"),
           "--no-progress"]
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 137
    idx = Index(tmp_path / "a" / "index.sqlite")
    assert any(r["step"] == 9 for r in idx.probes("t"))  # written just before the kill, not checkpointed
    idx.close()
    assert main(["resume", str(tmp_path / "a"), "--no-progress"]) == 0
    resumed = json.loads((tmp_path / "a" / "t" / "summary.json").read_text())["probes"]
    straight = run_experiment([build_config(cfg)], tmp_path / "b", progress_bar=False)[0].probes
    assert resumed == straight
    idx = Index(tmp_path / "a" / "index.sqlite")
    rows = idx.probes("t")
    idx.close()
    assert len(rows) == sum(len(v) for e in straight for v in e["values"].values())  # no duplicates


def test_probes_do_not_change_training(tmp_path: Path) -> None:
    """With dropout the training draws from the global RNG; probes (which rebuild the init with a manual seed)
    must leave it, and the weights, exactly as they were."""
    base = tiny(model={**TINY["model"], "dropout": 0.1}, probe_every=2)
    with_p = run_experiment([build_config({**base, "probes": ["repr_drift", "param_drift", "plasticity"]})],
                            tmp_path / "a", progress_bar=False)[0]
    plain = run_experiment([build_config({**base, "probes": []})], tmp_path / "b", progress_bar=False)[0]
    assert plain.probes == [] and len(with_p.probes) == 6
    assert plain.loss_matrix == with_p.loss_matrix
