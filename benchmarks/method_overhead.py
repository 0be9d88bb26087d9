"""Per-step training time of every continual-learning method against naive, same tiny model and steps.

Each method trains the same two-phase schedule (so replay buffers, teachers, anchors are active in phase
2) on the same data; ms_per_step is the summary's figure: training-loop time plus the method's phase-start
and phase-end work, divided by the number of optimizer steps. Prints one JSON line per method.

    python benchmarks/method_overhead.py [--steps 50] [--density 1.0] [--quick]

--quick: 2 steps per phase on 20 kB domains without probes (a smoke run, not the measurement).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from _device import describe

from sparsecl.config import build_config
from sparsecl.data.domains import load_domains
from sparsecl.methods import METHODS
from sparsecl.store.index import Index
from sparsecl.train.trainer import Trainer

QUICK_ARGS = ["--quick", "--density", "0.5"]  # the smoke run tests/test_benchmarks.py makes; sparse, so rigl runs
ROW_KEYS = ("method", "density")  # and ms_per_step, overhead_vs_naive, steps, method_memory_bytes unless skipped

SPARSE_ONLY = {"rigl"}
"""Methods that refuse dense models: skipped (with a JSON line saying so) at --density 1."""
PARAMS = {"rigl": {"interval": 4}}
"""So that rigl updates its masks within the phases (once per phase with --quick, 9 times at 50 steps)."""



def config(method: str, steps: int, density: float, threads: int, quick: bool = False) -> object:
    max_bytes = 20_000 if quick else 200_000
    return build_config({
        "name": method, "seed": 0, "device": "cpu", "threads": threads,
        "model": {"n_layer": 2, "n_head": 4, "d_model": 64, "block_size": 64},
        "data": {"domains": [{"name": "arith", "max_bytes": max_bytes}, {"name": "facts", "max_bytes": max_bytes}]},
        "schedule": "arith,facts",
        "train": {"steps_per_phase": steps, "batch_size": 16, "warmup_steps": 2},
        "eval": {"every": 0, "batches": 1, "batch_size": 16},
        "sparse": {"density": density},
        "method": {"name": method, "params": PARAMS.get(method, {})},
        **({"probes": []} if quick else {}),  # probe time is not in ms_per_step; quick skips it
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50, help="optimizer steps per phase (two phases)")
    ap.add_argument("--density", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="2 steps per phase, small domains, no probes: a smoke run")
    args = ap.parse_args()
    steps = 2 if args.quick else args.steps
    torch.set_num_threads(args.threads)
    names = ["naive"] + sorted(m for m in METHODS if m != "naive")
    domains = load_domains(config("naive", steps, args.density, args.threads, args.quick).data, 64)
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if name in SPARSE_ONLY and args.density >= 1.0:
                print(json.dumps({"method": name, "density": args.density,
                                  "skipped": "needs a sparse model: pass --density < 1",
                                  **describe(torch.device("cpu"), args.threads)}), flush=True)
                continue
            cfg = config(name, steps, args.density, args.threads, args.quick)
            idx = Index(Path(tmp) / f"{name}.sqlite")
            try:
                s = Trainer(cfg, domains, Path(tmp) / name, idx, name, progress_bar=False).run()
            finally:
                idx.close()
            ms = s.ms_per_step
            base = ms if name == "naive" else base
            print(json.dumps({"method": name, "ms_per_step": ms, "overhead_vs_naive": round(ms / base, 3),
                              "density": args.density, "steps": 2 * steps,
                              "method_memory_bytes": s.method_memory_bytes,
                              **describe(torch.device("cpu"), args.threads)}), flush=True)


if __name__ == "__main__":
    main()
