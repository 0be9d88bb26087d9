"""`sparsecl sweep`: run a grid of runs locally or on a Ray cluster."""

from __future__ import annotations

import argparse
from pathlib import Path

from sparsecl.config import preset_names
from sparsecl.errors import UserError

EPILOG = """\
sweep file: a run config (or `preset: NAME` plus changes) with a `grid` of dotted keys -> lists,
and optional `arms` and `seeds`; every combination is one run:

  preset: ablation
  train.steps_per_phase: 100        # any run-config key, nested or dotted
  grid:
    sparse.density: [0.05, 0.2, 1.0]
    train.lr: [1.0e-3, 3.0e-3]
    schedule: ["code,arith,facts", "facts,arith,code"]
    seed: [0, 1, 2]

Run ids come from the overrides (e.g. schedule-code+arith+facts__density-0.05__lr-0.001__s0; characters
other than letters, digits and ._+- become '_'), so a re-run skips finished runs, resumes unfinished ones
from their last checkpoint and re-runs failed ones. A run whose loss stops being finite is recorded as
'diverged' (its last good checkpoint is kept) and the sweep goes on; exit code 1 if any run failed or
diverged. A present `grid` must not be empty (leave it out to run only the arms and seeds).
SIGTERM or Ctrl-C stops the workers and marks their runs 'interrupted'; workers also stop if the sweep
process dies. Each run holds a lock on OUT/<run id>/.lock while it trains.
Outputs: OUT/<run id>/{config.yaml,summary.json,ckpt/}, OUT/index.sqlite (status and every evaluation
row of every run), OUT/sweep.json (run ids, groups, overrides). Then: sparsecl report OUT.

executors:
  local  one process per run, --parallel runs at a time, --threads-per-run threads each
         (parallel x threads <= cores; default: one single-thread run per core)
  ray    one Ray task per run with num_cpus = --threads-per-run and num_gpus = --gpus-per-run (a
         fraction below 1 shares a GPU, e.g. 0.5; whole GPUs above); --address connects to a running
         cluster (HEAD_IP:6379 from `ray start --head`, ray://head:10001, or auto), without it a private
         local Ray starts. On a cluster OUT must be a shared filesystem path mounted at the same place on
         every node (a task that cannot see OUT fails instead of writing elsewhere), and sparsecl must be
         installed on every node. device=cuda runs need --gpus-per-run (Ray hides unreserved GPUs);
         device=cpu runs must not reserve GPUs. The driver's own devices are not checked.
         OUT/index.sqlite table `attempts` records where each attempt ran (host, pid, Ray node, GPU ids).
         A run whose node dies is marked 'interrupted' and resumes from its last checkpoint when the same
         command runs again; if the whole cluster stops answering (its head is gone for 10 s), the sweep
         says so, marks the runs that were training 'interrupted' and exits 1.
"""


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sweep", help="run a grid of runs (local process pool or Ray)",
                       description="Expand a sweep file's grid into runs and train them in parallel; failed runs "
                       "are recorded and never stop the sweep.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("sweep", nargs="?", help="sweep YAML file (optional with --preset)")
    s.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    s.add_argument("--preset", help=f"start from a named preset: {', '.join(preset_names())}")
    s.add_argument("--out", required=True, help="output folder (one subfolder per run)")
    s.add_argument("--executor", choices=["local", "ray"], default="local", help="where runs execute")
    s.add_argument("--address", help="Ray cluster address (executor ray); default starts a private local Ray")
    s.add_argument("--parallel", type=int, help="runs at a time (executor local)")
    s.add_argument("--threads-per-run", type=int, help="CPU threads per run (Ray: CPUs each task reserves)")
    s.add_argument("--gpus-per-run", type=float, default=0.0,
                   help="GPUs each Ray task reserves (executor ray): a fraction < 1 or a whole number; default 0")
    s.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    s.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sparsecl.sweep import expand, load_sweep, run_sweep  # lazy: keeps --help torch-free
    from sparsecl.sweep.executors import plan_local, plan_ray  # lazy: keeps --help torch-free

    path = args.sweep
    overrides = list(args.overrides)
    if path and "=" in path and not path.endswith((".yaml", ".yml")):
        overrides.insert(0, path)
        path = None
    if args.executor == "local":
        for flag, value in (("--address", args.address), ("--gpus-per-run", args.gpus_per_run)):
            if value:
                raise UserError(f"{flag} applies to --executor ray; add --executor ray or drop {flag}")
        parallel, threads = plan_local(args.parallel, args.threads_per_run)
        gpus = 0.0
    else:
        if args.parallel is not None:
            raise UserError("--parallel applies to --executor local; Ray runs as many runs at once as the "
                            "cluster has room for (--threads-per-run CPUs, --gpus-per-run GPUs each)")
        threads, gpus = plan_ray(args.threads_per_run, args.gpus_per_run)
        parallel = 0
    data, arms, grid = load_sweep(path, overrides, args.preset)
    runs = expand(data, arms, grid)
    if args.dry_run:
        for sr in runs:
            print(sr.run_id)
        print(f"{len(runs)} runs")
        return 0
    where = f"{parallel} at a time" if args.executor == "local" else "on Ray"
    gpu_note = f", {gpus:g} GPU(s)" if gpus else ""
    print(f"sweep: {len(runs)} runs, {where}, {threads} thread(s){gpu_note} each -> {args.out}")
    results = run_sweep(runs, Path(args.out), args.executor, parallel, threads, args.address, gpus,
                        progress_bar=not args.no_progress)
    bad = [r for r in results if r["status"] in ("failed", "diverged", "busy", "interrupted")]
    n = {k: sum(r["status"] == k for r in results)
         for k in ("done", "skipped", "failed", "diverged", "busy", "interrupted")}
    line = f"done: {n['done']} trained, {n['skipped']} already finished, {n['failed']} failed"
    if n["diverged"]:
        line += f", {n['diverged']} diverged"
    if n["busy"]:
        line += f", {n['busy']} left to the process already training them"
    if n["interrupted"]:
        line += f", {n['interrupted']} interrupted (run this command again to resume them)"
    print(line)
    nodes: dict[str, int] = {}
    for r in results:
        if r["status"] == "done" and r.get("node_ip"):
            nodes[r["node_ip"]] = nodes.get(r["node_ip"], 0) + 1
    if nodes:
        print("trained on Ray nodes: " + ", ".join(f"{ip} ({k} run{'s' * (k != 1)})"
                                                   for ip, k in sorted(nodes.items())))
    for r in bad:
        print(f"  {r['status']} {r['run_id']}: {r['error']}")
    print(f"report: sparsecl report {args.out}")
    return 1 if bad else 0
