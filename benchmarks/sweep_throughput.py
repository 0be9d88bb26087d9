"""Sweep throughput on CPU: two parallel single-thread runs vs sequential two-thread runs (target >= 1.5x).

Tiny models are dominated by small ops that do not scale across threads, so running two of them side by
side on one thread each should finish more runs per hour than running them one after the other on two
threads. Both modes use the local executor with the same worker reuse; only (parallel, threads) differ.
Wall time includes starting the worker processes (importing torch), as a real sweep pays it; the mean
optimizer-loop time per run is printed alongside. The machine must be otherwise idle for a fair number.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/sweep_throughput.py            # 8 runs of 3 x 100 steps
    OMP_WAIT_POLICY=PASSIVE python benchmarks/sweep_throughput.py --small    # 4 runs of 3 x 20 steps
    OMP_WAIT_POLICY=PASSIVE python benchmarks/sweep_throughput.py --quick    # 2 runs of 3 x 2 steps, 20 kB domains

Prints one JSON object, on one line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from _device import cpu_vector_flags  # noqa: E402

from sparsecl.sweep import expand, run_sweep  # noqa: E402
from sparsecl.sweep.executors import available_cores  # noqa: E402

QUICK_ARGS = ["--quick"]  # the smoke run tests/test_benchmarks.py makes
ROW_KEYS = ("benchmark", "cores_visible", "omp_wait_policy", "steps_per_run", "parallel_2x1thread",
            "sequential_1x2threads", "speedup", "target", "meets_target")


def tiny_runs(n_runs: int, steps: int, max_bytes: int = 0):
    base = {"threads": 1, "device": "cpu", "model": {"n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 32},
            "schedule": "arith,facts,code", "train": {"steps_per_phase": steps, "batch_size": 4, "warmup_steps": 2},
            "eval": {"every": 0, "batches": 2, "batch_size": 4}}
    if max_bytes:  # quick: small domains load fast in every worker
        base["data"] = {"domains": [{"name": n, "max_bytes": max_bytes} for n in ("arith", "facts", "code")]}
    return expand(base, [], {"sparse.density": [0.1, 1.0], "seed": list(range(max(1, n_runs // 2)))})


def measure(n_runs: int, steps: int, parallel: int, threads: int, max_bytes: int = 0) -> dict:
    runs = tiny_runs(n_runs, steps, max_bytes)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = run_sweep(runs, Path(tmp), "local", parallel=parallel, threads=threads, progress_bar=False)
        wall = time.perf_counter() - t0
        train = sum(json.loads((Path(tmp) / r.run_id / "summary.json").read_text())["train_seconds"] for r in runs)
    failed = [r for r in res if r["status"] != "done"]
    if failed:
        raise SystemExit(f"benchmark run failed: {failed[0]['error']}")
    return {"parallel": parallel, "threads_per_run": threads, "runs": len(runs), "wall_s": round(wall, 2),
            "train_seconds_per_run": round(train / len(runs), 2),
            "runs_per_hour": round(len(runs) / wall * 3600, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="4 runs of 3 x 20 steps (a quick check)")
    ap.add_argument("--quick", action="store_true",
                    help="2 runs of 3 x 2 steps on 20 kB domains (a smoke run, not the measurement)")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=100, help="steps per phase (3 phases)")
    args = ap.parse_args()
    n_runs, steps = (2, 2) if args.quick else (4, 20) if args.small else (args.runs, args.steps)
    max_bytes = 20_000 if args.quick else 0
    par = measure(n_runs, steps, parallel=2, threads=1, max_bytes=max_bytes)
    seq = measure(n_runs, steps, parallel=1, threads=2, max_bytes=max_bytes)
    speedup = par["runs_per_hour"] / seq["runs_per_hour"]
    print(json.dumps({"benchmark": "sweep_throughput", "cores_visible": available_cores(),
                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "steps_per_run": 3 * steps,
                      "parallel_2x1thread": par, "sequential_1x2threads": seq, "speedup": round(speedup, 3),
                      "target": 1.5, "meets_target": speedup >= 1.5, **cpu_vector_flags()}), flush=True)


if __name__ == "__main__":
    main()
