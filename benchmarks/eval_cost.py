"""Cost of evaluation relative to training on the quickstart model: what eval.tokens costs a run.

Builds the quickstart model (dense arm) and its domains, then alternates, in one process and on the same
threads, timing training steps and full evaluations (every domain on its fixed validation sample) at each
token count asked for, so background load hits both alike. Prints one JSON line per token count:
  {"name": "eval_cost", "eval_tokens", "windows", "eval_seconds", "step_seconds", "evals_per_run",
   "eval_fraction_of_training"}
eval_fraction_of_training = evals_per_run x eval_seconds / (training steps per run x step_seconds), with the
quickstart's schedule (evaluations at init, every eval.every steps inside a phase, and at every phase end).

  OMP_WAIT_POLICY=PASSIVE python benchmarks/eval_cost.py [--tokens 8192 16384] [--batch-size 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from sparsecl.config import arm_configs, load_experiment  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[8192, 16384], help="eval.tokens values to time")
    ap.add_argument("--batch-size", type=int, default=0, help="eval.batch_size (0 = the preset's)")
    ap.add_argument("--preset", default="quickstart")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of (train steps, one eval per token count)")
    ap.add_argument("--steps", type=int, default=20, help="training steps timed per round")
    args = ap.parse_args()

    from sparsecl.data.stream import domain_val_windows
    from sparsecl.metrics.evaluate import evaluate_domains
    from sparsecl.train.runner import load_all_domains
    from sparsecl.train.trainer import Trainer

    data, arms = load_experiment(None, ["device=cpu", "probes=[]"], args.preset)
    cfg = arm_configs(data, arms)[0]
    bs = args.batch_size or cfg.eval.batch_size
    doms = load_all_domains([cfg])[0]
    import tempfile
    from pathlib import Path

    from sparsecl.store.index import Index

    with tempfile.TemporaryDirectory() as tmp:
        index = Index(Path(tmp) / "index.sqlite")
        tr = Trainer(cfg, doms, Path(tmp) / cfg.name, index, cfg.name, progress_bar=False)
        tr.optimizer = tr.make_optimizer()
        samples = {t: domain_val_windows({n: d.val for n, d in doms.items()}, cfg.seed, t, cfg.model.block_size)
                   for t in args.tokens}
        step_s: list[float] = []
        eval_s: dict[int, list[float]] = {t: [] for t in args.tokens}
        evaluate_domains(tr.model, samples[args.tokens[0]], bs, tr.device)  # warm-up
        for r in range(args.repeats):
            tr.model.train()
            t0 = time.perf_counter()
            for s in range(args.steps):
                x, y = tr.batch(list(doms)[:1], "bench", r, s)
                loss = tr.model.loss(x, y)
                tr.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                tr.optimizer.step()
            step_s.append((time.perf_counter() - t0) / args.steps)
            for t in args.tokens:
                t0 = time.perf_counter()
                evaluate_domains(tr.model, samples[t], bs, tr.device)
                eval_s[t].append(time.perf_counter() - t0)
        index.close()
    step = sorted(step_s)[len(step_s) // 2]
    steps = sum(p.steps for p in cfg.schedule)
    every = cfg.eval.every
    in_phase = sum((p.steps - 1) // every for p in cfg.schedule) if every else 0
    evals = 1 + len(cfg.schedule) + in_phase
    for t in args.tokens:
        e = sorted(eval_s[t])[len(eval_s[t]) // 2]
        print(json.dumps({"name": "eval_cost", "preset": args.preset, "eval_tokens": t,
                          "windows": len(samples[t][next(iter(samples[t]))][0]), "domains": len(doms),
                          "eval_batch_size": bs, "eval_seconds": round(e, 4), "step_seconds": round(step, 4),
                          "evals_per_run": evals, "steps_per_run": steps,
                          "eval_fraction_of_training": round(evals * e / (steps * step), 4),
                          "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
