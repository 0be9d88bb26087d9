"""Dense training throughput of the sparsecl GPT (fp32, CPU threads as given).

Prints one JSON object per line: name, config, tokens_per_second, ms_per_step (median over timed steps), and
utilisation_6N = 6 * params * tokens/s over the fp32 GEMM peak measured in the same process (machines drift).
Reference (issue #2): nanoGPT on a quiet 2-core machine here ran ~19,300 tokens/s for A and ~2,270 for B, i.e.
about 50% and 78% of a 2-thread fp32 GEMM peak of ~186 GFLOP/s.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/train_throughput.py [--threads 2] [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from sparsecl.config import ModelConfig  # noqa: E402
from sparsecl.model.gpt import GPT  # noqa: E402

CONFIGS = {
    "A": dict(n_layer=4, n_head=4, d_model=128, block_size=128, vocab_size=96, batch=16),
    "B": dict(n_layer=6, n_head=6, d_model=384, block_size=256, vocab_size=96, batch=8),
}


def matmul_peak_gflops() -> float:
    """fp32 GEMM throughput at 2048^3 with the current threads: the ceiling the 6N utilisation is taken from."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    times = []
    for _ in range(8):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * 2048**3 / statistics.median(times[2:]) / 1e9


def measure(name: str, spec: dict, steps: int, warmup: int, fused: bool, peak: float) -> dict:
    spec = dict(spec)
    batch = spec.pop("batch")
    torch.manual_seed(0)
    model = GPT(ModelConfig(**spec))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), fused=fused)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(spec["vocab_size"], (batch, spec["block_size"]), generator=g)
    y = torch.randint(spec["vocab_size"], (batch, spec["block_size"]), generator=g)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1000
    tps = batch * spec["block_size"] / (ms / 1000)
    n_params = sum(p.numel() for p in model.parameters())
    return {"name": name, "config": {**spec, "batch": batch, "dtype": "float32", "threads": torch.get_num_threads(),
                                     "fused_adamw": fused},
            "tokens_per_second": round(tps, 1), "ms_per_step": round(ms, 2), "params": n_params,
            "matmul_peak_gflops": round(peak, 1), "utilisation_6N": round(6 * n_params * tps / (peak * 1e9), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--configs", default="A,B")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = matmul_peak_gflops()
    for name in args.configs.split(","):
        print(json.dumps(measure(name, CONFIGS[name], args.steps, args.warmup, fused=True, peak=peak)), flush=True)


if __name__ == "__main__":
    main()
