"""Training throughput (tokens/s) of one rank vs two under torchrun: DDP (default) or FSDP2, gloo or nccl.

    python benchmarks/ddp_scaling.py [--quick] [--device cpu|cuda] [--parallel ddp|fsdp] [--steps 5]
                                     [--threads 1] [--ranks 1,2]

Each rank count runs ``torchrun --nproc-per-node N`` on this script's worker: the global batch (``--batch``
sequences of ``--seq`` tokens) is split over the ranks exactly as ``sparsecl run`` splits it
(``sparsecl.train.parallel``), and each rank uses ``--threads`` CPU threads. One JSON object per line: ranks,
tokens_per_second (global) and speedup_vs_1. On a 2-core CPU, 2 ranks x 1 thread use both cores where 1 rank x 1
thread uses one, so the CPU speedup mixes scaling with core count: the ``1rank_Nthreads`` row (1 rank with
ranks x threads threads) is the same-cores reference. On CUDA each rank takes one GPU.
--quick is a smoke run (2 layers, width 64, no same-cores row), not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spin-waiting slows small ops 3-30x

import torch  # noqa: E402
from _device import describe, pick_device, sync  # noqa: E402

QUICK_ARGS = ["--quick", "--steps", "2"]  # the smoke run tests/test_benchmarks.py makes
ROW_KEYS = ("name", "ranks", "threads_per_rank", "parallel", "tokens_per_second", "speedup_vs_1", "global_batch",
            "seq", "d_model", "n_layer")


def worker(a: argparse.Namespace) -> None:
    """One rank: build, wrap, time ``a.steps`` optimizer steps after one warm-up; rank 0 prints its numbers."""
    from sparsecl.config import ModelConfig, TrainConfig
    from sparsecl.model.gpt import GPT
    from sparsecl.model.optim import build_optimizer
    from sparsecl.train.parallel import Parallel, init_process_group, rank_device

    torch.set_num_threads(a.threads)
    device = rank_device(pick_device(a.device))
    init_process_group(device)
    par = Parallel.from_env(a.parallel, 1)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=a.n_layer, n_head=a.n_head, d_model=a.d_model, block_size=a.seq,
                            vocab_size=256)).to(device)
    par.wrap(model, device)
    opt = build_optimizer(model, TrainConfig(lr=1e-4))  # the trainer's AdamW (fused where PyTorch has it)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (a.batch, a.seq), generator=gen)
    y = torch.randint(0, 256, (a.batch, a.seq), generator=gen)
    rows = par.rows(a.batch, 0)
    xl, yl = x[rows].to(device), y[rows].to(device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with par.step_scope(model):
            loss = model.loss(xl, yl)
        loss.backward()
        opt.step()

    step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync(device)
    seconds = par.sums(time.perf_counter() - t0)[0] / par.world  # mean over ranks
    if par.main:
        print(json.dumps({"seconds": seconds, "tokens": a.batch * a.seq * a.steps}), flush=True)


def launch(a: argparse.Namespace, ranks: int, threads: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])]),
           "OMP_NUM_THREADS": str(threads)}
    args = ["--worker", "--device", a.device, "--parallel", a.parallel, "--steps", str(a.steps), "--threads",
            str(threads), "--batch", str(a.batch), "--seq", str(a.seq), "--d-model", str(a.d_model), "--n-layer",
            str(a.n_layer), "--n-head", str(a.n_head)]
    script = str(Path(__file__).resolve())
    cmd = [sys.executable, script, *args] if ranks == 1 else [  # one rank: no launcher to start
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--nnodes", "1",
        "--master-addr", "127.0.0.1", "--master-port", str(port), script, *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode:
        raise SystemExit(f"{ranks} rank(s) failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--parallel", default="ddp", choices=["ddp", "fsdp"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per rank")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--batch", type=int, default=16, help="global batch (sequences)")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-head", type=int, default=8)
    a = ap.parse_args()
    if a.worker:
        worker(a)
        return
    if a.quick:
        a.d_model, a.n_layer, a.n_head, a.seq, a.batch = 64, 2, 2, 32, 4
    device = pick_device(a.device)
    ranks = [int(r) for r in a.ranks.split(",")]
    base = None
    runs = [(f"{r}rank", r, a.threads) for r in ranks]
    if device.type == "cpu" and max(ranks) > 1 and not a.quick:
        runs.append((f"1rank_{max(ranks) * a.threads}threads", 1, max(ranks) * a.threads))
    for name, r, threads in runs:
        res = launch(a, r, threads)
        tps = res["tokens"] / res["seconds"]
        base = tps if base is None else base
        row = {"name": name, "ranks": r, "threads_per_rank": threads, "parallel": a.parallel if r > 1 else "none",
               "tokens_per_second": round(tps, 1), "speedup_vs_1": round(tps / base, 3), "global_batch": a.batch,
               "seq": a.seq, "d_model": a.d_model, "n_layer": a.n_layer, "steps": a.steps,
               **describe(device, threads)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
