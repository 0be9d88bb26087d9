"""`sparsecl sweep --executor ray --address` on a real two-node Ray cluster on this machine (two `ray start`
nodes with their own raylets, resources and node IPs; OUT in a temp dir both see): runs land on both nodes and
get the GPU they reserve (each node declares one logical GPU, so no GPU is needed: with device=auto the runs
train on the CPU), a node killed mid-run loses no finished run and its run resumes exactly on the next
invocation, and a cluster that dies entirely is reported in one line with its runs marked interrupted.

The sweep itself runs as a separate `python -m sparsecl` process, as a user would run it; the test kills
only processes its own cluster started (see _ray_cluster)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from _ray_cluster import LocalRayCluster, Node
from _sweep_tiny import metrics_only, tiny
from conftest import MULTIPROC
from index_util import query_index

from sparsecl.cli import main
from sparsecl.sweep.executors import execute_run

NODE_B_IP = "127.0.0.2"
# 4 runs; a step checkpoint every 2 steps gives the kill a checkpoint to resume from long before the run ends
SWEEP = {**tiny(checkpoint_every=2, device="auto"), "grid": {"sparse.density": [0.25, 1.0], "seed": [0, 1]}}
RUN_IDS = sorted(f"density-{d}__s{s}" for d in ("0.25", "1") for s in (0, 1))


def _sweep_file(tmp: Path, sweep: dict) -> Path:
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def _cmd(sweep_file: Path, out: Path, address: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sparsecl", "sweep", str(sweep_file), "--out", str(out), "--executor", "ray",
            "--address", address, "--threads-per-run", "1", "--gpus-per-run", "1", "--no-progress", *extra]


def _run(cmd: list[str], cluster: LocalRayCluster, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=cluster.env)


def _summaries(out: Path) -> dict[str, dict]:
    return {r: metrics_only(json.loads((out / r / "summary.json").read_text())) for r in RUN_IDS}


def _evals(out: Path) -> list[tuple]:
    return query_index(out, "SELECT run_id, phase, step, phase_step, phase_end, domain, loss, bpb, acc, tokens "
                            "FROM evals ORDER BY 1, 3, 6")


def _attempts(out: Path) -> list[dict]:
    if not (out / "index.sqlite").is_file():
        return []
    cols = ["run_id", "status", "ended", "node_ip", "pid", "gpu_ids", "resumed_from"]
    try:
        rows = query_index(out, f"SELECT {', '.join(cols)} FROM attempts ORDER BY rowid")
    except Exception:  # noqa: BLE001 - the table appears with the first run
        return []
    return [dict(zip(cols, r, strict=True)) for r in rows]


def _kill_mid_run(cluster: LocalRayCluster, node: Node, out: Path, driver: subprocess.Popen,
                  timeout: float = 180) -> str:
    """Wait until a run trains on ``node`` (its worker is one of the node's processes) and has a checkpoint,
    freeze it, then kill the whole node."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and driver.poll() is None:
        node.refresh()
        for a in _attempts(out):
            if a["ended"] is not None:
                continue
            rd = out / a["run_id"]
            if (rd / "ckpt" / "latest.json").is_file() and a["pid"] in node.pids:
                os.kill(a["pid"], signal.SIGSTOP)  # ours: a task worker of this node
                if (rd / "summary.json").is_file():  # finished in the meantime: wait for another
                    os.kill(a["pid"], signal.SIGCONT)
                    continue
                cluster.kill(node)
                return str(a["run_id"])
        time.sleep(0.05)
    driver.kill()
    raise AssertionError(f"no run was caught training on {node.ip} with a checkpoint; attempts: {_attempts(out)}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    pytest.importorskip("ray", reason="ray is not installed (pip install 'sparsecl[ray]')")
    with LocalRayCluster() as c:
        c.start_head({"head": 1}, gpus=1)
        c.wait_started()  # one at a time: starting both at once overloads a busy machine
        c.add_node({"node_b": 1}, gpus=1)
        c.wait_started()
        yield c


@pytest.fixture(scope="module")
def spanned(cluster: LocalRayCluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The uninterrupted sweep over both nodes (also the reference for the interrupted ones)."""
    tmp = tmp_path_factory.mktemp("span")
    p = _run(_cmd(_sweep_file(tmp, SWEEP), tmp / "out", cluster.address), cluster)
    assert p.returncode == 0, p.stdout + p.stderr
    return tmp / "out", p.stdout


@MULTIPROC
def test_sweep_spans_both_nodes(spanned: tuple[Path, str]) -> None:
    out, stdout = spanned
    assert "4 trained, 0 already finished, 0 failed" in stdout
    assert query_index(out, "SELECT run_id, status FROM runs ORDER BY 1") == [(r, "done") for r in RUN_IDS]
    attempts = _attempts(out)
    assert sorted(a["run_id"] for a in attempts) == RUN_IDS  # one attempt each, none resumed
    # --gpus-per-run 1 reached ray.remote(num_gpus=1): Ray handed every run a GPU of its node
    assert all(a["status"] == "done" and a["resumed_from"] is None and a["gpu_ids"] == '["0"]' for a in attempts)
    assert "1 thread(s), 1 GPU(s) each" in stdout
    ips = {a["node_ip"] for a in attempts}
    assert len(ips) == 2 and NODE_B_IP in ips, attempts  # both nodes trained runs
    assert "trained on Ray nodes: " in stdout and NODE_B_IP in stdout
    assert len({(a["node_ip"], a["pid"]) for a in attempts}) >= 2


def _sweep_killing(cmd: list[str], cluster: LocalRayCluster, node: Node, out: Path, timeout: float
                   ) -> tuple[str, str, str]:
    """Start the sweep, kill ``node`` while one of its runs trains (``_kill_mid_run``), and wait for the sweep
    to exit 1: (the killed run, stdout, stderr)."""
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster.env)
    try:
        victim = _kill_mid_run(cluster, node, out, driver)
        stdout, stderr = driver.communicate(timeout=timeout)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1, stdout + stderr
    return victim, stdout, stderr


@MULTIPROC
def test_node_killed_mid_run_resumes_on_the_next_invocation(cluster: LocalRayCluster, spanned: tuple[Path, str],
                                                            tmp_path: Path) -> None:
    node_b = next(n for n in cluster.nodes if n.ip == NODE_B_IP)
    out, cmd = tmp_path / "out", _cmd(_sweep_file(tmp_path, SWEEP), tmp_path / "out", cluster.address)
    victim, stdout, stderr = _sweep_killing(cmd, cluster, node_b, out, timeout=240)
    assert "3 trained, 0 already finished, 0 failed, 1 interrupted" in stdout, stdout + stderr
    assert f"interrupted {victim}: its Ray node died" in stdout
    status = dict(query_index(out, "SELECT run_id, status FROM runs"))
    assert status == {r: "interrupted" if r == victim else "done" for r in RUN_IDS}
    assert not (out / victim / "summary.json").exists() and (out / victim / "ckpt" / "latest.json").is_file()
    [lost] = [a for a in _attempts(out) if a["run_id"] == victim]
    assert lost["node_ip"] == NODE_B_IP and lost["status"] == "node lost"
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")}
    assert len(finished) == 3  # whatever finished (on either node) before or after the kill is kept

    again = _run(cmd, cluster)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 trained, 3 already finished, 0 failed" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # finished runs not retrained
    resumed = [a for a in _attempts(out) if a["run_id"] == victim][-1]
    assert resumed["node_ip"] != NODE_B_IP and resumed["status"] == "done"
    assert resumed["resumed_from"] and resumed["resumed_from"].startswith(("step-", "phase-"))
    ref_out = spanned[0]
    assert _summaries(out) == _summaries(ref_out)  # equal to the uninterrupted sweep
    assert _evals(out) == _evals(ref_out)  # no duplicate or missing rows from the killed attempt


@MULTIPROC
def test_whole_cluster_lost_then_rerun_resumes(cluster: LocalRayCluster, spanned: tuple[Path, str],
                                               tmp_path: Path) -> None:
    """The head dies (after the node test: it is the last node): one error line, runs marked interrupted,
    and the same command against a new cluster resumes them exactly."""
    head = cluster.nodes[0]
    sweep_file = _sweep_file(tmp_path, SWEEP)
    out = tmp_path / "out"
    for n in cluster.nodes[1:]:  # with the node test deselected, node b is still up: it goes first
        if n.alive():
            cluster.kill(n)
            time.sleep(10)  # until the head has marked it dead
    victim, stdout, stderr = _sweep_killing(_cmd(sweep_file, out, cluster.address), cluster, head, out, timeout=120)
    assert "sparsecl: error: lost the Ray cluster" in stderr and "rerun this command to resume them" in stderr
    status = dict(query_index(out, "SELECT run_id, status FROM runs"))
    assert status[victim] == "interrupted" and not (out / victim / "summary.json").exists()
    assert all(s in ("done", "queued", "interrupted") for s in status.values())
    with LocalRayCluster(cpus_per_node=2) as fresh:
        fresh.start_head({"head": 1}, gpus=2)
        fresh.wait_started()
        again = _run(_cmd(sweep_file, out, fresh.address), fresh)
    assert again.returncode == 0, again.stdout + again.stderr
    resumed = [a for a in _attempts(out) if a["run_id"] == victim][-1]
    assert resumed["status"] == "done" and resumed["resumed_from"]
    assert _summaries(out) == _summaries(spanned[0])
    assert _evals(out) == _evals(spanned[0])


def test_bad_ray_flags_exit_2_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep_file = _sweep_file(tmp_path, {**tiny(), "grid": {"seed": [0, 1]}})
    out = tmp_path / "out"
    base = ["sweep", str(sweep_file)]
    cases = [
        (["--executor", "ray", "--gpus-per-run", "-1"], "--gpus-per-run must be a number >= 0"),
        (["--executor", "ray", "--gpus-per-run", "nan"], "--gpus-per-run must be a number >= 0"),
        (["--executor", "ray", "--gpus-per-run", "1.5"], "fraction of one GPU or whole GPUs"),
        (["--executor", "ray", "--threads-per-run", "0"], "--threads-per-run must be >= 1"),
        (["--executor", "ray", "--parallel", "2"], "--parallel applies to --executor local"),
        (["--gpus-per-run", "1"], "--gpus-per-run applies to --executor ray"),
        (["--address", "auto"], "--address applies to --executor ray"),
        (["--executor", "ray", "--gpus-per-run", "1"], "has device=cpu but --gpus-per-run 1"),
        (["device=cuda", "--executor", "ray"], "has device=cuda but --gpus-per-run is 0"),
    ]
    for extra, message in cases:
        assert main(base + extra + ["--out", str(out), "--no-progress"]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (extra, err)
        assert not out.exists()


def test_unreachable_address_exits_2_at_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("ray", reason="ray is not installed (pip install 'sparsecl[ray]')")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sweep_file = _sweep_file(tmp_path, {**tiny(), "grid": {"seed": [0]}})
    t0 = time.monotonic()
    code = main(["sweep", str(sweep_file), "--out", str(tmp_path / "out"), "--executor", "ray", "--address",
                 f"127.0.0.1:{port}", "--no-progress"])
    assert code == 2 and time.monotonic() - t0 < 30
    assert f"no Ray cluster answers at --address 127.0.0.1:{port}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_task_that_cannot_see_out_writes_nothing(tmp_path: Path) -> None:
    """A node without the shared filesystem: the run fails with a clear error instead of writing a stray OUT."""
    out = tmp_path / "not-mounted"
    res = execute_run(tiny(), str(out), "r")
    assert res["status"] == "failed" and "is not visible on host" in res["error"]
    assert "shared filesystem" in res["error"] and not out.exists()
