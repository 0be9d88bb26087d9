"""Executors: a sweep equals sequential runs (local pool and Ray), failures are recorded and never stop the
sweep, re-runs skip finished runs and resume or re-run the others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from _sweep_tiny import metrics_only, tiny
from index_util import query_index

from sparsecl.cli import main
from sparsecl.sweep import expand, run_sweep
from sparsecl.train.runner import run_experiment

torch.set_num_threads(1)


def _four_runs():
    return expand(tiny(), [], {"sparse.density": [0.25, 1.0], "seed": [0, 1]})


def _summaries(out: Path, runs) -> dict[str, dict]:
    return {r.run_id: metrics_only(json.loads((out / r.run_id / "summary.json").read_text())) for r in runs}



@pytest.fixture(scope="module")
def sequential(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    """The same four runs trained one after the other in this process (the reference)."""
    out = tmp_path_factory.mktemp("seq")
    runs = _four_runs()
    run_experiment([r.config for r in runs], out, progress_bar=False)
    return out, _summaries(out, runs)


def _assert_same_as_sequential(out: Path, sequential: tuple[Path, dict[str, dict]]) -> None:
    ref_out, ref = sequential
    runs = _four_runs()
    got = _summaries(out, runs)
    assert got == ref  # every metric, matrix and curve identical; only timings may differ
    q = "SELECT run_id, phase, step, phase_step, phase_end, domain, loss, bpb, acc, tokens FROM evals ORDER BY 1,3,6"
    assert query_index(out, q) == query_index(ref_out, q)
    assert query_index(out, "SELECT run_id, status FROM runs ORDER BY 1") == [(r.run_id, "done") for r in
                                                                      sorted(runs, key=lambda r: r.run_id)]


def test_local_sweep_equals_sequential_runs(tmp_path: Path, sequential) -> None:
    res = run_sweep(_four_runs(), tmp_path, "local", parallel=2, threads=1, progress_bar=False)
    assert [r["status"] for r in res] == ["done"] * 4
    _assert_same_as_sequential(tmp_path, sequential)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/summary.json")}
    again = run_sweep(_four_runs(), tmp_path, "local", parallel=2, threads=1, progress_bar=False)
    assert [r["status"] for r in again] == ["skipped"] * 4
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/summary.json")} == mtimes
    assert json.loads((tmp_path / "sweep.json").read_text())["runs"][0]["overrides"] == {"sparse.density": 0.25,
                                                                                         "seed": 0}


def test_ray_sweep_equals_sequential_runs(tmp_path: Path, sequential) -> None:
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'sparsecl[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = run_sweep(_four_runs(), tmp_path, "ray", threads=1, progress_bar=False)
    finally:
        ray.shutdown()
    assert [r["status"] for r in res] == ["done"] * 4
    _assert_same_as_sequential(tmp_path, sequential)


def test_failed_run_is_recorded_and_rerun(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Through the CLI: a run whose input is missing fails, the other finishes; fixing the input and
    re-running trains only the failed one."""
    text_file = tmp_path / "mine.txt"
    sweep = tiny(schedule="arith,mine", data={"domains": ["arith", {"name": "mine", "source": "txt",
                                                                    "path": str(text_file)}]})
    sweep["arms"] = [{"name": "ok", "overrides": {"schedule": "arith,facts", "data.domains": ["arith", "facts"]}},
                     {"name": "mine", "overrides": {}}]
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    out = tmp_path / "out"
    argv = ["sweep", str(tmp_path / "sweep.yaml"), "--out", str(out), "--parallel", "2", "--threads-per-run", "1",
            "--no-progress"]
    assert main(argv) == 1  # failures give exit code 1 after the whole sweep ran
    text = capsys.readouterr().out
    assert "1 trained, 0 already finished, 1 failed" in text and "failed mine:" in text
    [(status, error)] = query_index(out, "SELECT status, error FROM runs WHERE run_id='mine'")
    assert status == "failed" and "mine.txt" in error and "does not exist" in error
    assert (out / "ok" / "summary.json").is_file() and not (out / "mine" / "summary.json").exists()
    # fix the input and re-run: the finished run is skipped, the failed one trained
    text_file.write_text("\n\n".join(f"document {i}: " + "lorem ipsum dolor sit amet " * 4 for i in range(300)))
    assert main(argv) == 0
    assert "1 trained, 1 already finished, 0 failed" in capsys.readouterr().out
    assert query_index(out, "SELECT run_id, status, error FROM runs ORDER BY 1") == [("mine", "done", None),
                                                                                 ("ok", "done", None)]
    assert main(["report", str(out)]) == 0 and (out / "report" / "index.html").is_file()


def test_killed_run_is_marked_failed_then_resumed_exactly(tmp_path: Path, sequential,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    runs = _four_runs()[:2]
    monkeypatch.setenv("SPARSECL_KILL_AT_STEP", "8")  # dies like SIGKILL after step 8 (checkpoint at step 6)
    res = run_sweep(runs, tmp_path, "local", parallel=1, threads=1, progress_bar=False)
    assert [r["status"] for r in res] == ["failed", "failed"]  # the first death did not stop the sweep
    assert all("exit code 137" in r["error"] for r in res)
    assert query_index(tmp_path, "SELECT DISTINCT status FROM runs") == [("failed",)]
    assert (tmp_path / runs[0].run_id / "ckpt" / "phase-001.json").is_file()
    monkeypatch.delenv("SPARSECL_KILL_AT_STEP")
    res = run_sweep(runs, tmp_path, "local", parallel=1, threads=1, progress_bar=False)
    assert [r["status"] for r in res] == ["done", "done"]
    ref = sequential[1]
    assert _summaries(tmp_path, runs) == {r.run_id: ref[r.run_id] for r in runs}
    # the resumed run's index rows equal the uninterrupted run's (no duplicates from the killed attempt)
    q = "SELECT run_id, step, domain, loss FROM evals WHERE run_id='{}' ORDER BY step, domain"
    assert query_index(tmp_path, q.format(runs[0].run_id)) == query_index(sequential[0], q.format(runs[0].run_id))
