"""Cost of every probe at a phase end, as a fraction of one phase's training time, for the quickstart model.

Trains the quickstart preset (4 layers, 4 heads, d_model 128, block 128, batch 16) for two phases without
probes, then times each probe at the end of phase 2 (so old domains, drift and interference all apply) in
one pass with shared caches, the default set first (its shared forwards are charged to the first probe that
needs them), then the others. Prints one JSON line per probe, then two for the default set as a whole: at the
first probe point of a run (which also fits plasticity's once-per-run reference from init) and at every later one:
  {"probe", "seconds", "fraction_of_phase", "default"}
fraction_of_phase = probe seconds / training seconds of one phase (measured here, same process and threads).
With --steps below 200 the phase time is the measured per-step time x 200 (quick mode, to prove it runs).

  OMP_WAIT_POLICY=PASSIVE python benchmarks/probe_cost.py [--steps 200] [--arm dense|er10] [--device cpu] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from _device import describe  # noqa: E402

from sparsecl.config import DEFAULT_PROBES, arm_configs, load_experiment  # noqa: E402
from sparsecl.probes import PROBES  # noqa: E402
from sparsecl.probes.context import PhaseStates, ProbeContext  # noqa: E402
from sparsecl.probes.run import _optim_state, learned_phases, run_probes  # noqa: E402

QUICK_ARGS = ["--quick"]  # the smoke run tests/test_benchmarks.py makes
ROW_KEYS = ("probe", "seconds", "fraction_of_phase", "default")
QUICK = ["model.n_layer=2", "model.d_model=64", "model.block_size=64", "eval.batches=1",
         "probe.lanczos_steps=4", "probe.hutchinson_samples=16", "probe.lmc_points=3", "probe.plasticity_steps=2",
         "probe.noise_batch=4", "probe.curvature_batch=2"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200, help="training steps per phase (quickstart: 200)")
    ap.add_argument("--arm", default="dense", choices=["dense", "er10"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="2 steps, a 2-layer 64-wide model, small probe settings: "
                    "a smoke run, not the measurement")
    args = ap.parse_args()
    args.steps = 2 if args.quick else args.steps

    from sparsecl.data.stream import val_windows
    from sparsecl.methods import METHODS
    from sparsecl.train.runner import load_all_domains
    from sparsecl.train.trainer import Trainer

    data, arms = load_experiment(None, [f"train.steps_per_phase={args.steps}", "probes=[]", "eval.every=0",
                                        f"device={args.device}", *(QUICK if args.quick else [])], "quickstart")
    cfg = next(c for c in arm_configs(data, arms) if c.name == args.arm)
    cfg.schedule = cfg.schedule[:2]
    doms = load_all_domains([cfg])[0]
    with tempfile.TemporaryDirectory() as tmp:
        from sparsecl.store.index import Index

        index = Index(Path(tmp) / "index.sqlite")
        tr = Trainer(cfg, doms, Path(tmp) / cfg.name, index, cfg.name, progress_bar=False)
        tr.run()
        index.close()
        phase_seconds = tr.progress.train_seconds / 2 * (200 / args.steps)
        dev = tr.device
        n_val = cfg.eval.batches * cfg.eval.batch_size
        windows = {n: val_windows(d.val, n_val, cfg.model.block_size) for n, d in doms.items()}
        method = METHODS[cfg.method.name](METHODS[cfg.method.name].validate_params(cfg.method.params))

        def context() -> ProbeContext:
            return ProbeContext(model=tr.model, cfg=cfg, windows=windows, phase=2, step=tr.progress.step,
                                current=list(cfg.schedule[1].domains), learned_phase=learned_phases(cfg, method, 2),
                                states=PhaseStates(tr.ckpt_dir, cfg), device=dev, phase_step=cfg.schedule[1].steps,
                                optim_state=lambda: _optim_state(tr))

        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        run_probes(context(), list(DEFAULT_PROBES), {})  # first probe point of a run: plasticity's init reference
        first_total = time.perf_counter() - t0
        ctx = context()  # every later probe point: fresh caches, the init reference already known
        t0 = time.perf_counter()
        run_probes(ctx, list(DEFAULT_PROBES), timings)
        default_total = time.perf_counter() - t0
        others = [n for n in PROBES if n not in DEFAULT_PROBES]
        run_probes(ctx, others, timings)
    where = describe(dev, torch.get_num_threads())
    for name in PROBES:
        print(json.dumps({"probe": name, "seconds": round(timings[name], 4),
                          "fraction_of_phase": round(timings[name] / phase_seconds, 4),
                          "default": name in DEFAULT_PROBES, **where}))
    print(json.dumps({"probe": "default_set_first_point", "seconds": round(first_total, 4),
                      "fraction_of_phase": round(first_total / phase_seconds, 4), "default": True, **where}))
    print(json.dumps({"probe": "default_set", "seconds": round(default_total, 4),
                      "fraction_of_phase": round(default_total / phase_seconds, 4), "default": True,
                      "phase_seconds": round(phase_seconds, 3), "steps_measured": args.steps, "arm": args.arm,
                      "threads": torch.get_num_threads(), "device": str(dev), **where}))


if __name__ == "__main__":
    main()
