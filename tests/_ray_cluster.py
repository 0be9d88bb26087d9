"""A real multi-node Ray cluster on this machine for the tests (imported, not a test module).

Each node is its own ``ray start --block`` process (its own raylet, object store and agents) with its own
temp dir, free ports and node IP (127.0.0.1 for the head, 127.0.0.x for the others, so Ray sees separate
machines). Only processes this helper started are ever signalled: a node is stopped by SIGTERM to its
``ray start`` process (which drains and stops its children) and killed by SIGKILL to that process and all
its descendants (raylet, agents, and the task workers, which run in their own process groups).
Never ``ray stop``: it would stop every Ray process on the machine, other users' included.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, from /proc; None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[19])


def descendants(pid: int) -> dict[int, int]:
    """pid -> start time of every live descendant of ``pid`` (the start time guards against pid reuse)."""
    tree: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        st = _stat(int(entry)) if entry.isdigit() else None
        if st is not None:
            tree.setdefault(st[0], []).append((int(entry), st[1]))
    out: dict[int, int] = {}
    todo = [pid]
    while todo:
        for child, start in tree.get(todo.pop(), []):
            out[child] = start
            todo.append(child)
    return out


def kill_if_same(pid: int, start: int) -> None:
    st = _stat(pid)
    if st is not None and st[1] == start:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class Node:
    def __init__(self, cmd: list[str], env: dict[str, str], ip: str, log: Path) -> None:
        self.cmd, self.env, self.ip, self.log = cmd, env, ip, log
        self.pids: dict[int, int] = {}  # every descendant seen so far -> its start time (orphans stay ours)
        self.launch()

    def launch(self) -> None:
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(self.cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)

    def refresh(self) -> None:
        if self.proc.poll() is None:
            self.pids.update(descendants(self.proc.pid))

    def alive(self) -> bool:
        return self.proc.poll() is None


class LocalRayCluster:
    """``with LocalRayCluster() as c: c.start_head(); c.add_node(); ... c.address``; always cleaned up.

    Drivers must run with ``env`` (it carries the cluster's auth token)."""

    def __init__(self, cpus_per_node: int = 1) -> None:
        # short: Ray puts Unix sockets under the temp dir (108-byte path limit)
        self.root = Path(tempfile.mkdtemp(prefix="scl-ray-", dir="/tmp"))
        self.cpus = cpus_per_node
        self.nodes: list[Node] = []
        self.gcs_port = _free_port()
        # a private token: nobody else on this machine can submit work to this cluster, and a token another
        # Ray left in ~/.ray/auth_token does not switch some of its processes to a different auth mode
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": secrets.token_hex(32)}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def _start(self, name: str, extra: list[str], ip: str, resources: dict[str, float], gpus: int = 0) -> Node:
        ports = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port"]
        cmd = [RAY, "start", "--block", "--num-cpus", str(self.cpus), "--object-store-memory", str(80 * 2**20),
               "--disable-usage-stats", "--include-log-monitor", "false", "--min-worker-port", "0",
               "--max-worker-port", "0", "--temp-dir", str(self.root / name), "--node-ip-address", ip,
               "--resources", json.dumps(resources), "--num-gpus", str(gpus)]
        for p in ports:
            cmd += [p, str(_free_port())]
        node = Node(cmd + extra, self.env, ip, self.root / f"{name}.log")
        self.nodes.append(node)
        return node

    def start_head(self, resources: dict[str, float], gpus: int = 0) -> Node:
        return self._start("head", ["--head", "--port", str(self.gcs_port), "--include-dashboard", "false",
                                    "--dashboard-port", str(_free_port()),
                                    "--ray-client-server-port", str(_free_port())], "127.0.0.1", resources, gpus)

    def add_node(self, resources: dict[str, float], gpus: int = 0) -> Node:
        """A node that Ray sees as another machine (node IP 127.0.0.k); ``gpus`` are logical GPUs Ray hands out
        (CUDA_VISIBLE_DEVICES) whether or not the machine has any."""
        return self._start(f"n{len(self.nodes)}", ["--address", self.address], f"127.0.0.{len(self.nodes) + 1}",
                           resources, gpus)

    def wait_started(self, timeout: float = 240.0, tries: int = 3) -> None:
        """Until every node's ``ray start`` says the runtime started (its raylet registered with the head).

        A node that gives up (Ray waits 30 s for its raylet to register, which a loaded machine can exceed)
        is started again, up to ``tries`` times."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            left = tries
            while "Ray runtime started" not in node.log.read_text():
                node.refresh()
                if not node.alive():
                    left -= 1
                    if left == 0:
                        raise RuntimeError(f"ray start exited with {node.proc.returncode}:\n{node.log.read_text()}")
                    node.launch()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"ray node {node.ip} did not start:\n{node.log.read_text()}")
                time.sleep(0.2)
            node.refresh()

    def kill(self, node: Node) -> None:
        """The node dies at once, as a machine that loses power: SIGKILL to it and everything it started."""
        node.refresh()
        node.proc.kill()
        for pid, start in node.pids.items():
            kill_if_same(pid, start)
        node.proc.wait()

    def close(self) -> None:
        for node in self.nodes:
            node.refresh()
        for node in reversed(self.nodes):  # workers first, the head last
            if node.alive():
                node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for node in self.nodes:
            try:
                node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        time.sleep(0.5)
        for node in self.nodes:
            for pid, start in node.pids.items():  # ours that outlived the drain
                kill_if_same(pid, start)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
