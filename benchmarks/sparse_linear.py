"""Forward + backward time of one linear layer: dense, masked (W * M) and csr, one JSON object per line.

    python benchmarks/sparse_linear.py [--quick] [--threads 2] [--repeats 15] [--min-seconds 0.5] [--device cpu|cuda]

Shapes 1024x1024 and 4096x4096, 512 and 2048 tokens, densities 1, 5, 10, 20, 30, 100%, fp32 (CPU by default;
on CUDA the dense matmuls run in plain fp32, TF32 off, so that all three compute the same thing).
Each timing is the median of repeated fwd+bwd passes (input gradient included, as inside a network).
--quick runs only 1024x1024 at 512 tokens. Targets (2 CPU threads, 1024-wide, 512 tokens): csr >= 3x
faster than dense at 1%, >= 2x at 5%, >= 1.2x at 10%.
The full grid takes 6.5 min on a quiet 2-core AVX2 CPU (> 21 min before the caps): a row stops repeating after
--max-seconds (3 rounds at least), and on the CPU csr is not timed on 4096-wide layers above twice its
break-even density (sparsecl.sparse.backends), where it is known to lose to dense by up to 10x at up to 17 s
a call; such rows print csr_ms null and say why in csr_skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spin-waiting slows small ops 3-30x

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _device import describe, pick_device, sync  # noqa: E402

from sparsecl.model.gpt import MaskableLinear  # noqa: E402
from sparsecl.rng import keyed_generator  # noqa: E402
from sparsecl.sparse.backends import cpu_level, csr_break_even  # noqa: E402
from sparsecl.sparse.csr import CSRLinear  # noqa: E402
from sparsecl.sparse.topology import n_kept  # noqa: E402

QUICK_ARGS = ["--quick", "--repeats", "1", "--min-seconds", "0"]  # the smoke run tests/test_benchmarks.py makes
ROW_KEYS = ("in", "out", "tokens", "density", "dense_ms", "masked_ms", "csr_ms", "csr_speedup_vs_dense")
SKIP_CSR_FROM = 4096 * 4096
"""Layers at least this large (out x in) skip csr above twice its break-even density on the CPU."""


def median_ms(fns: dict[str, Callable[[], None]], repeats: int, device: torch.device,
              min_seconds: float = 0.5, max_seconds: float = float("inf")) -> dict[str, float]:
    """Median time of each function, run round-robin so that load changes on a shared machine hit all alike."""
    for fn in fns.values():
        fn()
        fn()  # warm-up: allocator, MKL / cuSPARSE handles
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < repeats or (time.perf_counter() - start < min_seconds and rounds < 10 * repeats):
        if rounds >= min(3, repeats) and time.perf_counter() - start > max_seconds:
            break
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
        rounds += 1
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def er_mask(out_f: int, in_f: int, density: float) -> torch.Tensor:
    """A fixed ER mask drawn on the CPU (same mask on every device)."""
    k = n_kept(out_f, in_f, density)
    idx = torch.randperm(out_f * in_f, generator=keyed_generator(0, f"bench/{out_f}x{in_f}/{density}"))[:k]
    m = torch.zeros(out_f * in_f, dtype=torch.bool)
    m[idx] = True
    return m.view(out_f, in_f)


def csr_skip_reason(in_f: int, out_f: int, tokens: int, density: float, device: torch.device) -> str | None:
    """Why csr is not timed for this row (None: it is)."""
    be = csr_break_even(tokens)
    if device.type == "cpu" and in_f * out_f >= SKIP_CSR_FROM and density > 2 * be:
        return f"density {density} > 2 x csr break-even {be} ({cpu_level()}, {tokens} tokens): known to lose"
    return None


def bench(in_f: int, out_f: int, tokens: int, density: float, repeats: int,
          device: torch.device, min_seconds: float = 0.5, max_seconds: float = float("inf")) -> dict[str, object]:
    torch.manual_seed(0)
    x = torch.randn(tokens, in_f, device=device, requires_grad=True)
    dy = torch.randn(tokens, out_f, device=device)
    w = torch.nn.Parameter(torch.randn(out_f, in_f, device=device) / in_f**0.5)

    def dense() -> None:
        x.grad = w.grad = None
        F.linear(x, w).backward(dy)

    masked = MaskableLinear(in_f, out_f, False, ["x"]).to(device)
    mask = er_mask(out_f, in_f, density).to(device)
    with torch.no_grad():
        masked.weight.copy_(w * mask)
    masked.mask = mask
    csr = CSRLinear.from_masked(masked)

    def run(mod: torch.nn.Module) -> None:
        x.grad = None
        mod.zero_grad(set_to_none=True)
        mod(x).backward(dy)

    skip = csr_skip_reason(in_f, out_f, tokens, density, device)
    fns = {"dense_ms": dense, "masked_ms": lambda: run(masked)}
    if skip is None:
        fns["csr_ms"] = lambda: run(csr)
    ms = median_ms(fns, repeats, device, min_seconds, max_seconds)
    row: dict[str, object] = {"in": in_f, "out": out_f, "tokens": tokens, "density": density,
                              **{k: round(v, 3) for k, v in ms.items()}}
    row["masked_overhead_vs_dense"] = round(ms["masked_ms"] / ms["dense_ms"] - 1.0, 3)
    if skip is None:
        row["csr_speedup_vs_dense"] = round(ms["dense_ms"] / ms["csr_ms"], 2)
    else:
        row.update(csr_ms=None, csr_speedup_vs_dense=None, csr_skipped=skip)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only 1024x1024 at 512 tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--min-seconds", type=float, default=0.5, help="keep repeating (up to 10x) until this long")
    ap.add_argument("--max-seconds", type=float, default=15.0, help="stop a row after this long (>= 3 rounds)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    where = describe(device, args.threads)
    sizes = [1024] if args.quick else [1024, 4096]
    token_counts = [512] if args.quick else [512, 2048]
    for n in sizes:
        for tokens in token_counts:
            for density in (0.01, 0.05, 0.10, 0.20, 0.30, 1.0):
                row = bench(n, n, tokens, density, args.repeats, device, args.min_seconds, args.max_seconds)
                print(json.dumps({**row, **where}), flush=True)


if __name__ == "__main__":
    main()
