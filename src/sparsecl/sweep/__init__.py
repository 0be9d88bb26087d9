"""Sweeps: a grid of runs (densities x topologies x methods x seeds x ...) into one output folder.

``run_sweep`` validates every grid point (``train.preflight``: paths, device, trackers, vocabulary) and
checks existing run folders before anything is written, then
hands the runs that are not finished to an executor (``executors.run_local`` or ``executors.run_ray``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sparsecl.config import to_dict
from sparsecl.data.domains import source_hygiene_warnings
from sparsecl.errors import UserError
from sparsecl.store.atomic import atomic_write_json
from sparsecl.store.index import INDEX_NAME, Index
from sparsecl.sweep.executors import (
    SWEEP_FILE,
    Result,
    check_ray_devices,
    config_matches,
    connect_ray,
    run_local,
    run_ray,
)
from sparsecl.sweep.grid import SweepRun, expand, load_sweep
from sparsecl.train.preflight import preflight
from sparsecl.train.runner import has_checkpoint, print_hygiene_warnings, run_state

__all__ = ["SweepRun", "expand", "load_sweep", "run_sweep", "SWEEP_FILE"]


def run_sweep(runs: list[SweepRun], out: Path, executor: str = "local", parallel: int = 1, threads: int = 1,
              address: str | None = None, gpus_per_run: float = 0.0, progress_bar: bool = True) -> list[Result]:
    """Run every unfinished point of the sweep; returns one result per run (status done/failed/skipped)."""
    # Local data sources are read by each run: one that cannot be read fails that run alone (recorded in the
    # index), as any run failure does, and the sweep goes on. On Ray the devices are those of the nodes.
    if executor not in ("local", "ray"):
        raise UserError(f"unknown executor '{executor}'; choose local or ray")
    preflight([r.config for r in runs], out, [r.run_id for r in runs], check_devices=executor == "local")
    if executor == "ray":
        check_ray_devices({r.run_id: r.config.device for r in runs}, gpus_per_run)
    jobs: list[tuple[str, dict[str, Any]]] = []
    results: list[Result] = []
    for r in runs:
        data = to_dict(r.config)
        data["threads"] = threads
        rd = out / r.run_id
        state = run_state(rd)
        if (state == "done" or has_checkpoint(rd)) and not config_matches(rd, data):
            raise UserError(f"run folder '{rd}' holds a run with a different config than this sweep's point "
                            f"{r.overrides}; use another --out or remove that folder")
        if state == "done":
            results.append({"run_id": r.run_id, "status": "skipped", "error": None, "seconds": 0.0})
        else:
            jobs.append((r.run_id, data))
    _warn_hygiene([r.config for r in runs if any(r.run_id == j for j, _ in jobs)])
    connected = executor == "ray" and bool(jobs) and connect_ray(address)  # an unreachable cluster: nothing written
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / SWEEP_FILE, {"runs": [{"run_id": r.run_id, "group": r.group, "overrides": r.overrides}
                                                  for r in runs]})
    index = Index(out / INDEX_NAME)
    try:
        for run_id, data in jobs:
            index.set_run(run_id, data["name"], "queued", config=data)
    finally:
        index.close()
    bar = tqdm(total=len(runs), initial=len(results), unit="run", desc="sweep", disable=not progress_bar,
               file=sys.stderr, dynamic_ncols=True)
    counts = {"done": 0, "failed": 0, "skipped": len(results)}

    def on_result(res: Result) -> None:
        counts[res["status"]] = counts.get(res["status"], 0) + 1
        bar.update(1)
        bar.set_postfix(counts)
        if res["status"] in ("failed", "diverged", "busy"):
            bar.write(f"run {res['run_id']} {res['status']}: {res['error']}")

    bar.set_postfix(counts)
    try:
        if executor == "local":
            results += run_local(jobs, out, parallel, on_result)
        elif jobs:
            results += run_ray(jobs, out, threads, gpus_per_run, address, on_result)
    finally:
        bar.close()
        if connected:
            import ray  # optional: ray (connected means it is installed)

            ray.shutdown()
    order = {r.run_id: i for i, r in enumerate(runs)}
    return sorted(results, key=lambda res: order[res["run_id"]])


def _warn_hygiene(configs: list[Any]) -> None:
    """The data hygiene warning `sparsecl run` prints, printed here once per distinct data config of the runs
    to train (the workers load the domains and print nothing). A source that cannot be read is left to the run
    that reads it, which fails alone and says why."""
    done: set[str] = set()
    for c in configs:
        key = json.dumps(to_dict(c.data), sort_keys=True)
        if key in done:
            continue
        done.add(key)
        try:
            lines = source_hygiene_warnings(c.data)
        except (UserError, OSError, ValueError):
            continue
        print_hygiene_warnings(lines)
