"""Whole runs: learning happens, matrices have the right shape, seeds repeat, killed runs resume exactly."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sparsecl.config import arm_configs, build_config, load_experiment
from sparsecl.metrics.summary import TIMING_KEYS
from sparsecl.store.record import RunSummary
from sparsecl.train.runner import run_experiment


def metrics_only(summary: RunSummary | dict) -> dict:
    """The summary.json object minus timings (a returned summary in the form written to disk)."""
    js = summary.to_json() if isinstance(summary, RunSummary) else summary
    return {k: v for k, v in js.items() if k not in TIMING_KEYS}


def test_tiny_run_learns_and_fills_the_matrix(tmp_path: Path, tiny) -> None:
    [s] = run_experiment([build_config(tiny())], tmp_path, progress_bar=False)
    L = s.loss_matrix
    assert len(L) == 4 and all(len(r) == 3 for r in L)  # init + 3 phases, 3 domains
    assert len(s.bpb_matrix) == 4 and len(s.acc_matrix) == 4
    for j in range(3):  # every phase lowers the loss of the domain it trains
        assert L[j + 1][j] < L[j][j] - 0.3
    assert s.first_trained_phase == [1, 2, 3]
    for key in ("domains", "phases", "avg_forgetting", "bwt", "fwt", "final_avg_loss", "params_total",
                "params_nonzero", "density", "topology", "method", "seed", "wall_seconds", "tokens_per_second"):
        assert key in s.to_json()
    assert s.avg_forgetting >= -s.bwt - 1e-9  # max-based forgetting is never below -BWT
    assert s.bpb_matrix[1][0] == pytest.approx(L[1][0] / 0.6931471805599453, rel=1e-9)
    run_dir = tmp_path / "tiny"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["sparse"]["density"] == 1.0
    assert json.loads((run_dir / "ckpt" / "latest.json").read_text()) == {"tag": "phase-003"}
    for p in (1, 2, 3):
        assert (run_dir / "ckpt" / f"phase-{p:03d}.safetensors").stat().st_size > 0
    con = sqlite3.connect(tmp_path / "index.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # init + per phase two in-phase evals (steps 5, 10) + phase end = 1 + 3 * 3 evaluations, 3 domains each
    assert con.execute("SELECT COUNT(*) FROM evals").fetchone()[0] == (1 + 3 * 3) * 3
    row = con.execute("SELECT loss FROM evals WHERE phase=2 AND phase_end=1 AND domain='facts'").fetchone()
    assert row[0] == pytest.approx(L[2][1])


def test_sparse_summary_counts(tmp_path: Path, tiny) -> None:
    [s] = run_experiment([build_config(tiny(**{"sparse.density": 0.1}))], tmp_path, progress_bar=False)
    assert s.density == pytest.approx(0.1, abs=0.002)
    unmasked = s.params_total - s.masked_params_total
    assert s.params_nonzero == pytest.approx(unmasked + 0.1 * s.masked_params_total, rel=0.01)
    assert sum(li.nonzero for li in s.layers) == s.masked_params_nonzero
    assert s.topology == "er"


def test_same_seed_same_matrix_other_seed_differs(tmp_path: Path, tiny) -> None:
    cfg = tiny(**{"sparse.density": 0.2})
    [a] = run_experiment([build_config({**cfg, "name": "a"})], tmp_path, progress_bar=False)
    [b] = run_experiment([build_config({**cfg, "name": "b"})], tmp_path, progress_bar=False)
    [c] = run_experiment([build_config({**cfg, "name": "c", "seed": 1})], tmp_path, progress_bar=False)
    assert a.loss_matrix == b.loss_matrix and a.acc_matrix == b.acc_matrix
    assert a.loss_matrix != c.loss_matrix


def test_joint_trains_the_mixture_from_phase_one(tmp_path: Path, tiny) -> None:
    [s] = run_experiment([build_config(tiny(**{"method.name": "joint"}))], tmp_path, progress_bar=False)
    assert s.first_trained_phase == [1, 1, 1]
    L = s.loss_matrix
    assert all(L[1][i] < L[0][i] - 0.3 for i in range(3))


def _cli(args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "sparsecl", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize("kill_at,extra", [(18, {}), (22, {"checkpoint_every": 4}),
                                           (22, {"checkpoint_every": 4, "checkpoint_resume_state": "latest"})])
def test_resume_after_kill_equals_uninterrupted(tmp_path: Path, tiny, kill_at: int, extra: dict) -> None:
    cfg = tiny(**{"sparse.density": 0.3, "model.dropout": 0.1, **extra})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    killed = _cli(["run", str(path), "--out", str(tmp_path / "killed"), "--no-progress"],
                  {"SPARSECL_KILL_AT_STEP": str(kill_at)})
    assert killed.returncode == 137, killed.stderr
    assert not (tmp_path / "killed" / "tiny" / "summary.json").exists()
    again = _cli(["run", str(path), "--out", str(tmp_path / "killed"), "--no-progress"])
    assert again.returncode == 2 and "sparsecl resume" in again.stderr
    resumed = _cli(["resume", str(tmp_path / "killed"), "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr
    [ref] = run_experiment(arm_configs(*load_experiment(str(path), [])), tmp_path / "ref", progress_bar=False)
    got = json.loads((tmp_path / "killed" / "tiny" / "summary.json").read_text())
    assert metrics_only(got) == metrics_only(ref)

    def rows(db: Path) -> list:
        con = sqlite3.connect(db)
        return con.execute("SELECT phase, step, phase_step, phase_end, domain, loss, acc FROM evals "
                           "ORDER BY step, domain").fetchall()

    assert rows(tmp_path / "killed" / "index.sqlite") == rows(tmp_path / "ref" / "index.sqlite")


def test_bfloat16_autocast_changes_training_numerics_but_not_eval_precision(tmp_path: Path, tiny) -> None:
    [f32] = run_experiment([build_config(tiny(name="f"))], tmp_path, progress_bar=False)
    [bf16] = run_experiment([build_config(tiny(name="b", dtype="bfloat16"))], tmp_path, progress_bar=False)
    assert f32.loss_matrix[0] == bf16.loss_matrix[0]  # init evaluated in float32 either way
    assert f32.loss_matrix[1] != bf16.loss_matrix[1]  # training forward ran in bfloat16
    for a, b in zip(f32.loss_matrix[1], bf16.loss_matrix[1], strict=True):
        assert abs(a - b) < 0.1


def test_resume_also_starts_arms_the_kill_kept_from_starting(tmp_path: Path, tiny) -> None:
    cfg = tiny(**{"sparse.density": 0.3})
    cfg["arms"] = [{"name": "first", "overrides": {}}, {"name": "second", "overrides": {"sparse.density": 0.5}}]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    killed = _cli(["run", str(path), "--out", str(tmp_path / "k"), "--no-progress"], {"SPARSECL_KILL_AT_STEP": "18"})
    assert killed.returncode == 137, killed.stderr
    assert not (tmp_path / "k" / "second" / "ckpt").exists()  # the kill came during the first arm
    resumed = _cli(["resume", str(tmp_path / "k"), "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr
    refs = run_experiment(arm_configs(*load_experiment(str(path), [])), tmp_path / "ref", progress_bar=False)
    for ref in refs:
        got = json.loads((tmp_path / "k" / ref.name / "summary.json").read_text())
        assert metrics_only(got) == metrics_only(ref)
        assert (tmp_path / "k" / ref.name / "topology.json").is_file()
    assert refs[1].density == pytest.approx(0.5, abs=0.01)


def test_latest_resume_state_keeps_models_for_probes_and_resume_state_once(tmp_path: Path, tiny) -> None:
    from safetensors.torch import load_file

    from sparsecl.probes.posthoc import probe_run

    cfg = tiny(**{"sparse.density": 0.3, "checkpoint_every": 4, "checkpoint_resume_state": "latest"})
    [s] = run_experiment([build_config(cfg)], tmp_path, progress_bar=False)
    ckpt = tmp_path / "tiny" / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "latest.json", "phase-001.json", "phase-001.safetensors", "phase-002.json", "phase-002.safetensors",
        "phase-003.json", "phase-003.resume.safetensors", "phase-003.safetensors"]
    assert all(k.startswith("model.") for k in load_file(str(ckpt / "phase-001.safetensors")))
    assert any(k.startswith("optim.") for k in load_file(str(ckpt / "phase-003.resume.safetensors")))
    [full] = run_experiment([build_config({**cfg, "checkpoint_resume_state": "every"})], tmp_path / "every",
                            progress_bar=False)
    assert metrics_only(full) == metrics_only(s)  # where state is kept changes no number
    assert (tmp_path / "every" / "tiny" / "ckpt" / "phase-001.resume.safetensors").is_file()
    res = probe_run(tmp_path / "tiny", ["update_ratio", "param_drift"])
    got = {e["phase"]: e["values"] for e in res["probes"]}
    assert [bool(got[j]["update_ratio"]) for j in (1, 2, 3)] == [False, False, True]  # only the newest
    assert all(got[j]["param_drift"] for j in (1, 2, 3))  # models of every phase are still there


def test_resume_without_resume_state_says_so(tmp_path: Path, tiny) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny()))
    killed = _cli(["run", str(path), "--out", str(tmp_path / "k"), "--no-progress"], {"SPARSECL_KILL_AT_STEP": "18"})
    assert killed.returncode == 137
    (tmp_path / "k" / "tiny" / "ckpt" / "phase-001.resume.safetensors").unlink()
    res = _cli(["resume", str(tmp_path / "k"), "--no-progress"])
    assert res.returncode == 2
    assert "lacks its resume state" in res.stderr and len(res.stderr.strip().splitlines()) == 1
