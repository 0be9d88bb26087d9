"""Launch ``sparsecl`` under torchrun (CPU, gloo) from tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from _ray_cluster import descendants, kill_if_same  # the /proc process-tree helpers

from sparsecl.config import RunConfig, dump_yaml

SRC = str(Path(__file__).resolve().parents[1] / "src")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(cfg: RunConfig | dict[str, Any], path: Path) -> Path:
    path.write_text(dump_yaml(cfg) if isinstance(cfg, RunConfig) else yaml.safe_dump(cfg))
    return path


def torchrun(n: int, *args: str, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node n -m sparsecl ARGS`` on a free local port; returns the finished process.

    Past the timeout torchrun and its ranks are killed (killing only torchrun, as ``subprocess.run`` does, leaves
    the ranks, which torchrun starts in sessions of their own, training and slowing down every later test)."""
    full_env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
                "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--nnodes", "1",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "sparsecl", *args]
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        ranks = descendants(proc.pid)
        proc.kill()
        for pid, start in ranks.items():
            kill_if_same(pid, start)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
