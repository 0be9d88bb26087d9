"""Cost of the probes relative to training, over a whole schedule (default: five domains at quickstart size).

Trains the preset's dense arm (quickstart: 4 layers, 4 heads, d_model 128, block 128, batch 16) on the
schedule without probes, then, in the same process and on the same threads, runs the default probes at every
phase end exactly as a run would (the first point also fits plasticity's once-per-run reference from init),
and finally the non-default probes at the last phase end. Per-domain probes grow with the number of domains,
so the last phase end (most old domains) is the dearest. On a shared machine the load drifts, so every probe
point is compared with 2 x 10 training steps timed just before and after it (a phase's training time =
steps x that step time), in wall time and in this process's CPU time (steadier when other processes compete
for the cores). Prints JSON lines:
  {"probe", "seconds", "fraction_of_phase", "default"}          per probe, at the last phase end
  {"probe": "default_set_phase", "phase", "seconds", "fraction_of_phase", "cpu_fraction_of_phase"}   each phase end
  {"probe": "default_set_run", "seconds", "fraction_of_training", "cpu_fraction_of_training",
   "fraction_of_measured_training", ...}
fraction_of_training = default probes at every phase end / training time of the whole schedule: what the
default probes add to a run (fraction_of_measured_training divides by the run's own, earlier training time).

  OMP_WAIT_POLICY=PASSIVE python benchmarks/probe_cost.py [--schedule code,arith,dyck,facts,cipher]
      [--preset quickstart] [--steps 100] [--arm dense|er10] [--device cpu] [--defaults-only] [--quick]
      [key=value ...]
"""

from __future__ import annotations

import argparse
import copy
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
from sparsecl.probes.run import learned_phases, run_probes  # noqa: E402

QUICK_ARGS = ["--quick"]  # the smoke run tests/test_benchmarks.py makes
ROW_KEYS = ("probe", "seconds")
QUICK = ["schedule=arith,facts", "model.n_layer=2", "model.d_model=64", "model.block_size=64", "eval.tokens=64",
         "probe.lanczos_steps=4", "probe.hutchinson_samples=16", "probe.lmc_points=3", "probe.plasticity_steps=2",
         "probe.noise_batch=4", "probe.curvature_batch=2"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quickstart", help="preset giving the model and training settings")
    ap.add_argument("--schedule", default="code,arith,dyck,facts,cipher",
                    help="schedule override ('' = the preset's own)")
    ap.add_argument("--steps", type=int, default=100, help="training steps per phase")
    ap.add_argument("--arm", default="dense", help="arm of the preset (quickstart: dense or er10)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--defaults-only", action="store_true", help="skip timing the non-default (Hessian) probes")
    ap.add_argument("overrides", nargs="*", help="further key=value config overrides, e.g. probe.batch_size=8")
    ap.add_argument("--quick", action="store_true", help="2 steps, a 2-layer 64-wide model, small probe settings: "
                    "a smoke run, not the measurement")
    args = ap.parse_args()
    args.steps = 2 if args.quick else args.steps

    from sparsecl.methods import build_method
    from sparsecl.model.optim import build_optimizer
    from sparsecl.probes import plasticity
    from sparsecl.probes.posthoc import _optim_state
    from sparsecl.store.index import Index
    from sparsecl.train.runner import load_all_domains
    from sparsecl.train.trainer import Trainer

    ovs = [f"train.steps_per_phase={args.steps}", "probes=[]", "eval.every=0", f"device={args.device}"]
    if args.schedule:
        ovs.append(f"schedule={args.schedule}")
    ovs += [*(QUICK if args.quick else []), *args.overrides]
    data, arms = load_experiment(None, ovs, args.preset)
    cfgs = arm_configs(data, arms)
    cfg = next((c for c in cfgs if c.name == args.arm), cfgs[0])
    doms = load_all_domains([cfg])[0]
    T = len(cfg.schedule)
    plasticity._FROM_INIT.clear()
    with tempfile.TemporaryDirectory() as tmp:
        index = Index(Path(tmp) / "index.sqlite")
        tr = Trainer(cfg, doms, Path(tmp) / cfg.name, index, cfg.name, progress_bar=False)
        tr.run()
        index.close()
        train_seconds = tr.progress.train_seconds
        method = build_method(cfg.method.name, cfg.method.params)
        states = PhaseStates(tr.ckpt_dir, cfg)
        model = tr.model

        def context(j: int) -> ProbeContext:
            model.load_state_dict({k: v.to(tr.device) for k, v in states(j).items()}, strict=False)
            return ProbeContext(model=model, cfg=cfg, windows=tr.val, phase=j, step=j * args.steps,
                                current=list(cfg.schedule[j - 1].domains), learned_phase=learned_phases(cfg, method, j),
                                states=states, device=tr.device, phase_step=cfg.schedule[j - 1].steps,
                                optim_state=lambda j=j: _optim_state(tr.ckpt_dir, j))

        def step_seconds(j: int, n: int = 10) -> float:
            """Seconds per training step measured now, on a throwaway copy of the model: the load of a shared
            machine drifts, so each probe point is compared with training steps timed next to it."""
            m = copy.deepcopy(model).train()
            opt = build_optimizer(m, cfg.train)
            t0, c0 = time.perf_counter(), time.process_time()
            for s in range(n):
                x, y = tr.batch(list(cfg.schedule[j - 1].domains), "bench", j, s)
                loss = m.loss(x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n

        per_phase: list[float] = []
        per_phase_cpu: list[float] = []
        local_phase: list[float] = []  # training time of one phase at the step time measured around its probes
        local_phase_cpu: list[float] = []
        timings: dict[str, float] = {}
        for j in range(1, T + 1):
            ctx = context(j)
            w0, c0 = step_seconds(j)
            t: dict[str, float] = {}
            t0, p0 = time.perf_counter(), time.process_time()
            run_probes(ctx, list(DEFAULT_PROBES), t)
            per_phase.append(time.perf_counter() - t0)
            per_phase_cpu.append(time.process_time() - p0)
            w1, c1 = step_seconds(j)
            local_phase.append(args.steps * (w0 + w1) / 2)
            local_phase_cpu.append(args.steps * (c0 + c1) / 2)
            if j == T:
                timings = t
                if not args.defaults_only:
                    run_probes(ctx, [n for n in PROBES if n not in DEFAULT_PROBES], timings)
    where = describe(tr.device, torch.get_num_threads())
    for name in timings:
        print(json.dumps({"probe": name, "seconds": round(timings[name], 4),
                          "fraction_of_phase": round(timings[name] / local_phase[-1], 4),
                          "default": name in DEFAULT_PROBES, **where}))
    for j, (s, ph, c, pc) in enumerate(zip(per_phase, local_phase, per_phase_cpu, local_phase_cpu, strict=True), 1):
        print(json.dumps({"probe": "default_set_phase", "phase": j, "seconds": round(s, 4),
                          "fraction_of_phase": round(s / ph, 4), "cpu_fraction_of_phase": round(c / pc, 4), **where}))
    total = sum(per_phase)
    print(json.dumps({"probe": "default_set_run", "seconds": round(total, 3),
                      "fraction_of_training": round(total / sum(local_phase), 4),
                      "cpu_fraction_of_training": round(sum(per_phase_cpu) / sum(local_phase_cpu), 4),
                      "train_seconds": round(train_seconds, 3),
                      "fraction_of_measured_training": round(total / train_seconds, 4),
                      "schedule": ",".join("+".join(p.domains) for p in cfg.schedule), "steps_per_phase": args.steps,
                      "overrides": args.overrides, "arm": cfg.name, "load_1min": round(os.getloadavg()[0], 2),
                      **where}))


if __name__ == "__main__":
    main()
