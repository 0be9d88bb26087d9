"""Dense training throughput of the sparsecl GPT (fp32 on CPU threads by default; CUDA and bf16 autocast too).

Prints one JSON object per line: name, config, tokens_per_second, ms_per_step (median over timed steps), and
utilisation_6N = 6 * params * tokens/s over the GEMM peak measured in the same process and dtype (machines
drift, and no peak-FLOPs table can know this machine). Configs A and B are the issue's CPU sizes; C
(12 layers, 768 wide, block 1024, ~85M parameters) is a GPU size.
Reference (issue #2): nanoGPT on a quiet 2-core machine here ran ~19,300 tokens/s for A and ~2,270 for B, i.e.
about 50% and 78% of a 2-thread fp32 GEMM peak of ~186 GFLOP/s.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/train_throughput.py [--threads 2] [--steps 30] [--quick]
    python benchmarks/train_throughput.py --device cuda --dtype bfloat16 --configs A,B,C
--quick: config A only, 2 timed steps after 1 warm-up, the GEMM peak at n=512 (a smoke run, not the measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

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


def measure(name: str, spec: dict, steps: int, warmup: int, fused: bool, peak: float, device: torch.device,
            dtype: str) -> dict:
    spec = dict(spec)
    batch = spec.pop("batch")
    torch.manual_seed(0)
    model = GPT(ModelConfig(**spec)).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), fused=fused)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(spec["vocab_size"], (batch, spec["block_size"]), generator=g).to(device)
    y = torch.randint(spec["vocab_size"], (batch, spec["block_size"]), generator=g).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        with autocast:
            loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1000
    tps = batch * spec["block_size"] / (ms / 1000)
    n_params = sum(p.numel() for p in model.parameters())
    return {"name": name, "config": {**spec, "batch": batch, "dtype": dtype, "fused_adamw": fused},
            **describe(device, torch.get_num_threads()),
            "tokens_per_second": round(tps, 1), "ms_per_step": round(ms, 2), "params": n_params,
            "matmul_peak_gflops": round(peak, 1), "utilisation_6N": round(6 * n_params * tps / (peak * 1e9), 3)}


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
    args = ap.parse_args()
    if args.quick:
        args.configs, args.steps, args.warmup = "A", 2, 1
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    peak = matmul_peak_gflops(device, torch.bfloat16 if args.dtype == "bfloat16" else torch.float32,
                              512 if args.quick else 0)
    for name in args.configs.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"--configs: unknown config {name!r}; choose from {', '.join(CONFIGS)}")
        row = measure(name, CONFIGS[name], args.steps, args.warmup, True, peak, device, args.dtype)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
