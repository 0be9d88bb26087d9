"""Dense training throughput of the sparsecl GPT (fp32 on CPU threads by default; CUDA and bf16 autocast too).

Prints one JSON object per line: name, config, tokens_per_second, ms_per_step (median over timed steps), and
utilisation_6N = 6 * params * tokens/s over the GEMM peak measured in the same process and dtype (machines
drift, and no peak-FLOPs table can know this machine). Configs A and B are the issue's CPU sizes; C
(12 layers, 768 wide, block 1024, ~85M parameters) is a GPU size.
Reference (issue #2): nanoGPT on a quiet 2-core machine here ran ~19,300 tokens/s for A and ~2,270 for B, i.e.
about 50% and 78% of a 2-thread fp32 GEMM peak of ~186 GFLOP/s.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/train_throughput.py [--threads 2] [--steps 30] [--quick]
    python benchmarks/train_throughput.py --device cuda --dtype bfloat16 --configs A,B,C
    python benchmarks/train_throughput.py --configs A --compile      # eager and compiled rows side by side
--quick: config A only, 2 timed steps after 1 warm-up, the GEMM peak at n=512 (a smoke run, not the measurement).
--compile adds a row '<config>+compile' per config: the same model with every block compiled as the trainer's
train.compile does (``Block.compile()``), timed round-robin with the eager one in the same process, with
speedup_vs_eager and compile_seconds (its first step minus its median step, on a fresh Inductor cache:
what a run pays once).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from _device import describe, pick_device, sync  # noqa: E402

from sparsecl.config import ModelConfig  # noqa: E402
from sparsecl.model.gpt import GPT  # noqa: E402

QUICK_ARGS = ["--quick"]  # the smoke run tests/test_benchmarks.py makes
ROW_KEYS = ("name", "config", "tokens_per_second", "ms_per_step", "params", "matmul_peak_gflops", "utilisation_6N")

CONFIGS = {
    "A": dict(n_layer=4, n_head=4, d_model=128, block_size=128, vocab_size=96, batch=16),
    "B": dict(n_layer=6, n_head=6, d_model=384, block_size=256, vocab_size=96, batch=8),
    "C": dict(n_layer=12, n_head=12, d_model=768, block_size=1024, vocab_size=256, batch=16),
}


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, n: int = 0) -> float:
    """GEMM throughput with the current threads / GPU at n^3: the ceiling the 6N utilisation is taken from."""
    n = n or (2048 if device.type == "cpu" else 8192)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for _ in range(8):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times[2:]) / 1e9


def build(spec: dict, fused: bool, device: torch.device, dtype: str, compile_blocks: bool
          ) -> tuple[Callable[[], None], int]:
    """One training step of a freshly built model (closure) and the model's parameter count."""
    spec = dict(spec)
    batch = spec.pop("batch")
    torch.manual_seed(0)
    model = GPT(ModelConfig(**spec)).to(device)
    if compile_blocks:
        for block in model.blocks:
            block.compile()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), fused=fused)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(spec["vocab_size"], (batch, spec["block_size"]), generator=g).to(device)
    y = torch.randint(spec["vocab_size"], (batch, spec["block_size"]), generator=g).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def step() -> None:
        with autocast:
            loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step, sum(p.numel() for p in model.parameters())


def timed(step: Callable[[], None], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - t0


def measure(name: str, spec: dict, steps: int, warmup: int, fused: bool, peak: float, device: torch.device,
            dtype: str, compiled: bool = False) -> list[dict]:
    """The eager row, and with ``compiled`` the compiled row, timed round-robin (load hits both alike)."""
    variants = [False, True] if compiled else [False]
    built = [build(spec, fused, device, dtype, c) for c in variants]
    first = [timed(step, device) for step, _ in built]  # the compiled model compiles here
    for _ in range(warmup - 1):
        for step, _ in built:
            step()
    times: list[list[float]] = [[] for _ in built]
    for _ in range(steps):
        for i, (step, _) in enumerate(built):
            times[i].append(timed(step, device))
    rows = []
    tokens = spec["batch"] * spec["block_size"]
    eager_ms = 1000 * statistics.median(times[0])
    for c, (_, n_params), t, t1 in zip(variants, built, times, first, strict=True):
        ms = statistics.median(t) * 1000
        tps = tokens / (ms / 1000)
        row = {"name": name + ("+compile" if c else ""),
               "config": {**spec, "dtype": dtype, "fused_adamw": fused, "compile": c},
               **describe(device, torch.get_num_threads()),
               "tokens_per_second": round(tps, 1), "ms_per_step": round(ms, 2), "params": n_params,
               "matmul_peak_gflops": round(peak, 1), "utilisation_6N": round(6 * n_params * tps / (peak * 1e9), 3)}
        if c:
            row |= {"speedup_vs_eager": round(eager_ms / ms, 3), "compile_seconds": round(t1 - ms / 1000, 1)}
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--configs", default="A,B", help="comma-separated names from A, B, C")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="bfloat16 = autocast forward, fp32 master weights (as the trainer's dtype=bfloat16)")
    ap.add_argument("--quick", action="store_true", help="config A, 2 steps, small GEMM peak: a smoke run")
    ap.add_argument("--compile", action="store_true",
                    help="also time each config with every block compiled (train.compile), side by side")
    args = ap.parse_args()
    if args.compile:  # compile_seconds is what a first run pays: not a cache hit from an earlier benchmark
        cache = tempfile.mkdtemp(prefix="sparsecl-bench-inductor-")
        atexit.register(shutil.rmtree, cache, True)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cache)
    if args.quick:
        args.configs, args.steps, args.warmup = "A", 2, 1
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    peak = matmul_peak_gflops(device, torch.bfloat16 if args.dtype == "bfloat16" else torch.float32,
                              512 if args.quick else 0)
    for name in args.configs.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"--configs: unknown config {name!r}; choose from {', '.join(CONFIGS)}")
        for row in measure(name, CONFIGS[name], args.steps, args.warmup, True, peak, device, args.dtype,
                           args.compile):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
