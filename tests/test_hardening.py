"""Failures that must say what failed and leave a usable folder (issue 12): divergence, tampered checkpoints,
reruns after a deleted run folder, the run lock, a full disk, signals and leftover temp files."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config
from index_util import query_index

from sparsecl.cli import main
from sparsecl.config import build_config
from sparsecl.store import checkpoint as ck
from sparsecl.train.runner import run_experiment

FAST = {"probes": [], "eval.every": 0}
# lr 300 without clipping: phase 1 (3 steps) stays finite, phase 2 reaches a NaN loss (measured: step 6 of a
# fresh phase at this lr); CPU runs are deterministic, so the step is the same every time.
DIVERGE = {**FAST, "train.lr": 300.0, "train.min_lr": 0.0, "train.grad_clip": 0.0, "train.warmup_steps": 0,
           "train.lr_schedule": "constant", "schedule": [{"domain": "arith", "steps": 3},
                                                         {"domain": "facts", "steps": 12}]}



@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny run (3 phases, evaluations at phase ends only)."""
    out = tmp_path_factory.mktemp("finished")
    run_experiment([build_config(tiny_config(**FAST))], out, progress_bar=False)
    return out


def test_divergence_is_one_line_exit_1_status_diverged_and_keeps_the_good_checkpoint(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(**DIVERGE)))
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("sparsecl: failed: diverged at step ") and " of phase 2 (loss nan); lower train.lr" in err
    step = int(err.split("at step ")[1].split()[0])
    assert 3 < step <= 15
    [(status, error)] = query_index(out, "SELECT status, error FROM runs")
    assert status == "diverged" and error in err
    assert all(math.isfinite(r[0]) for r in query_index(out, "SELECT loss FROM evals"))
    ckpt = out / "tiny" / "ckpt"
    assert ck.latest_tag(ckpt) == "phase-001"
    tensors, state = ck.load_checkpoint(ckpt, "phase-001")  # verified against its checksums
    assert state["step"] == 3
    assert all(bool(t.isfinite().all()) for t in tensors.values() if t.is_floating_point())


def test_sweep_goes_on_after_a_diverged_run(tmp_path: Path) -> None:
    from sparsecl.sweep import expand, run_sweep

    runs = expand(tiny_config(**DIVERGE), [], {"train.lr": [3e-3, 300.0]})
    res = run_sweep(runs, tmp_path, "local", parallel=1, threads=1, progress_bar=False)
    assert [r["status"] for r in res] == ["done", "diverged"]
    assert "diverged at step" in res[1]["error"]
    assert query_index(tmp_path, "SELECT run_id, status FROM runs ORDER BY run_id") == [
        ("lr-0.003", "done"), ("lr-300", "diverged")]
    assert (tmp_path / "lr-0.003" / "summary.json").is_file()
    assert ck.latest_tag(tmp_path / "lr-300" / "ckpt") == "phase-001"


def _partial_copy(finished: Path, dst: Path) -> Path:
    """A copy of the finished run that looks killed after phase 1."""
    shutil.copytree(finished, dst)
    rd = dst / "tiny"
    (rd / "summary.json").unlink()
    (rd / "ckpt" / "latest.json").write_text(json.dumps({"tag": "phase-001"}))
    return rd


@pytest.mark.parametrize("damage,message", [("flip", "was modified or corrupted"), ("truncate", "truncated")])
def test_tampered_or_truncated_checkpoint_is_refused(finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     damage: str, message: str) -> None:
    rd = _partial_copy(finished, tmp_path / "out")
    path = rd / "ckpt" / "phase-001.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        for i in range(len(data) - 2000, len(data)):  # 2,000 bytes of tensor data: the header stays valid
            data[i] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    assert main(["resume", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "phase-001.safetensors" in err, err
    assert main(["probe", str(rd), "--probes", "param_drift"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (rd / "probes.json").exists()


def test_resume_verifies_cleans_temp_files_and_matches_the_uninterrupted_run(finished: Path, tmp_path: Path) -> None:
    rd = _partial_copy(finished, tmp_path / "out")
    debris = [rd / "ckpt" / ".phase-002.safetensors.x1y2.tmp", rd / ".summary.json.abc.tmp"]
    for p in debris:
        p.write_bytes(b"\0" * 100)
    old = os.umask(0o022)
    try:
        assert main(["resume", str(tmp_path / "out"), "--no-progress"]) == 0
    finally:
        os.umask(old)
    assert not any(p.exists() for p in debris)
    want = json.loads((finished / "tiny" / "summary.json").read_text())
    got = json.loads((rd / "summary.json").read_text())
    assert got["loss_matrix"] == want["loss_matrix"]
    for name in ("summary.json", "config.yaml", "ckpt/phase-003.safetensors", "ckpt/phase-003.json"):
        assert (rd / name).stat().st_mode & 0o777 == 0o644, name  # the umask, not mkstemp's 0600


def test_shape_mismatch_is_one_line(finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rd = _partial_copy(finished, tmp_path / "out")
    cfg = yaml.safe_load((rd / "config.yaml").read_text())
    cfg["model"]["d_model"] = 64  # the folder's config no longer matches its checkpoints
    (rd / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["resume", str(rd), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not fit this run's model" in err, err


def test_rerun_after_deleting_the_run_folder_keeps_one_attempt(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(**{**FAST, "probes": ["dormant"]})))
    out = tmp_path / "out"
    tail = ["--out", str(out), "--no-progress"]
    argv = ["run", str(path), *tail]
    assert main(argv) == 0
    evals = query_index(out, "SELECT COUNT(*) FROM evals")[0][0]
    probes = query_index(out, "SELECT COUNT(*) FROM probes")[0][0]
    assert evals == (1 + 3) * 3  # init + 3 phase ends, 3 domains
    assert probes > 0
    shutil.rmtree(out / "tiny")
    assert main(argv) == 0
    assert query_index(out, "SELECT COUNT(*) FROM evals")[0][0] == evals
    assert query_index(out, "SELECT COUNT(*) FROM probes")[0][0] == probes
    # a rerun that differs only in threads or logging reuses the finished run instead of refusing it
    capsys.readouterr()
    assert main(["run", str(path), "threads=2", "log.project=other", *tail]) == 0
    assert query_index(out, "SELECT COUNT(*) FROM evals")[0][0] == evals
    # a different config is still refused, with one line
    assert main(["run", str(path), "seed=5", *tail]) == 2
    assert "different config" in capsys.readouterr().err


def test_folder_of_a_run_without_checkpoint_accepts_the_corrected_command(tmp_path: Path) -> None:
    """A run that stopped before its first checkpoint (config.yaml only) is started afresh by a new command."""
    out = tmp_path / "out"
    (out / "tiny").mkdir(parents=True)
    (out / "tiny" / "config.yaml").write_text(yaml.safe_dump({**tiny_config(), "seed": 99}))
    [s] = run_experiment([build_config(tiny_config(**FAST))], out, progress_bar=False)
    assert s.seed == 0 and yaml.safe_load((out / "tiny" / "config.yaml").read_text())["seed"] == 0


def test_a_second_process_cannot_train_a_locked_run(finished: Path, tmp_path: Path) -> None:
    from sparsecl.store.lock import run_lock

    rd = _partial_copy(finished, tmp_path / "out")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    with run_lock(rd):  # this process trains the run
        res = subprocess.run([sys.executable, "-m", "sparsecl", "resume", str(rd), "--no-progress"],
                             capture_output=True, text=True, env=env, timeout=120)
        assert res.returncode == 2, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        assert "is being trained by another process" in res.stderr and f"pid {os.getpid()}" in res.stderr
    assert not (rd / "summary.json").exists()
    assert ck.latest_tag(rd / "ckpt") == "phase-001"


def test_sigterm_stops_the_run_and_marks_it_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(**{**FAST, "train.steps_per_phase": 20000})))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-m", "sparsecl", "run", str(path), "--out", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "tiny" / "topology.json").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert err.strip().splitlines()[-1].startswith("sparsecl: interrupted")
    [(status,)] = query_index(out, "SELECT status FROM runs")
    assert status == "interrupted"


def test_full_disk_says_so(tmp_path: Path) -> None:
    from sparsecl.store.index import Index

    index = Index(tmp_path / "index.sqlite")
    pages = index.conn.execute("PRAGMA page_count").fetchone()[0]
    index.conn.execute(f"PRAGMA max_page_count={pages}")  # SQLite then fails as on a full disk
    rows = [{"phase": 0, "step": i, "phase_step": i, "phase_end": False, "domain": "d" * 200, "loss": 1.0,
             "bpb": 1.0, "acc": 0.5, "tokens": 1} for i in range(2000)]
    with pytest.raises(OSError) as e:
        index.add_evals("r", rows)
    assert e.value.errno == errno.ENOSPC and "disk is full" in str(e.value)
    index.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_sweep_workers_stop_with_their_parent(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM to the sweep stops its worker; a killed sweep's worker stops by itself. Either way the run is
    marked interrupted and no orphan keeps training."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**tiny_config(**{**FAST, "train.steps_per_phase": 20000}), "grid": {"seed": [0]}}))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-m", "sparsecl", "sweep", str(path), "--out", str(out), "--parallel",
                             "1", "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lock = out / "run__s0" / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "run__s0" / "topology.json").exists():
        time.sleep(0.2)
    worker = int(lock.read_text())
    assert worker != proc.pid
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode == (1 if sig == signal.SIGTERM else -signal.SIGKILL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the sweep worker outlived its parent")
    assert query_index(out, "SELECT status FROM runs") == [("interrupted",)]


def test_probe_of_checkpoints_that_do_not_fit_the_config_is_one_line(finished: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    shutil.copytree(finished / "tiny", tmp_path / "tiny")
    cfg = yaml.safe_load((tmp_path / "tiny" / "config.yaml").read_text())
    cfg["model"]["d_model"] = 64
    (tmp_path / "tiny" / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["probe", str(tmp_path / "tiny"), "--probes", "param_drift"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not fit the model" in err, err


def test_cli_reports_a_full_disk_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import sparsecl.train.runner as runner

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "tiny" / "summary.json"))

    monkeypatch.setattr(runner, "run_experiment", full)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the disk is full" in err and "summary.json" in err, err
