"""Time of one whole training step (forward, loss, backward, clipping, AdamW) for sparse GPTs vs dense.

    python benchmarks/train_step.py [--quick] [--threads 2] [--steps 5] [--device cpu|cuda]

One JSON object per line with keys name, ms_per_step, speedup_vs_dense (dense time / this time):
  dense             6 layers, d_model 1024, 512 tokens per step (batch 2 x 256)
  csr_5pct          the same shapes at 5% density (ER), csr backend         target: speedup >= 1.6
  masked_5pct       the same at 5% with the masked backend                  target: speedup >= 0.95 (<= 5% over dense)
  iso_params_10pct  10% density widened to the dense model's nonzero count (matching=params), csr backend;
                    its dense reference is `dense`                           target: speedup >= 0.5 (<= 2x)
  iso_params_10pct_block  the same with topology=block (128x128 tiles) and the block backend   target: >= 0.5
  iso_params_10pct_block256  the same with 256x256 tiles (coarser topology, larger GEMMs), for reference
--quick uses 2 layers of width 256 (a smoke run, not the measurement). The iso-parameter models at full size
are about 3200 wide; all six models are built first (17 GB peak RSS) and timed round-robin. The targets are
for this project's 2-core CPU; --device cuda measures the same models on a GPU (fp32, TF32 off).
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
from _device import describe, pick_device, sync  # noqa: E402

from sparsecl.config import ModelConfig, SparseConfig, TrainConfig  # noqa: E402
from sparsecl.model.gpt import GPT  # noqa: E402
from sparsecl.model.optim import build_optimizer  # noqa: E402
from sparsecl.sparse.apply import apply_sparsity, structural_counts  # noqa: E402
from sparsecl.sparse.matching import resolve_matching  # noqa: E402

QUICK_ARGS = ["--quick", "--steps", "1"]  # the smoke run tests/test_benchmarks.py makes
ROW_KEYS = ("name", "ms_per_step", "speedup_vs_dense", "d_model", "d_ff", "params_nonzero", "dense_reference_params",
            "topology", "backend")
ISO_BLOCK = 128
"""Tile size of the block iso line. The block backend multiplies tile by tile from b = 128 on (one GEMM of
2 x 512 x 128 x 128 per tile); smaller tiles need gathers and thinner GEMMs and cost more on a 2-core CPU."""


def build_step(model_cfg: ModelConfig, sparse: SparseConfig, batch: int,
               device: torch.device) -> tuple[Callable[[], None], dict]:
    """One training step of a freshly built model (closure), and the model's sizes."""
    match = resolve_matching(model_cfg, sparse)
    torch.manual_seed(0)
    model = GPT(match.model)
    apply_sparsity(model, sparse, 0)
    model.to(device)
    # The trainer's AdamW (fused, decay on matrices). The unfused one's sqrt ran ~3x slower on the zero
    # moments a masked layer keeps off its mask (torch 2.13, AVX2), which made masked look 8% slower than dense.
    opt = build_optimizer(model, TrainConfig(lr=1e-4))
    gen = torch.Generator().manual_seed(0)
    T = model_cfg.block_size
    vocab = model.cfg.vocab_size  # the built model's: a bare ModelConfig leaves it to the tokenizer (0)
    x = torch.randint(0, vocab, (batch, T), generator=gen).to(device)
    y = torch.randint(0, vocab, (batch, T), generator=gen).to(device)

    def step() -> None:
        loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    _, nonzero = structural_counts(model)
    info = {"d_model": match.model.d_model, "d_ff": match.model.hidden, "params_nonzero": nonzero,
            "dense_reference_params": match.dense_reference_params,
            "topology": "dense" if sparse.is_dense else sparse.topology, "backend": sparse.backend}
    if sparse.topology == "block" and not sparse.is_dense:
        info["block"] = sparse.block
    return step, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 layers of width 256: a smoke run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model (median reported)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    if args.quick:
        model_cfg = ModelConfig(n_layer=2, n_head=4, d_model=256, block_size=256)
    else:
        model_cfg = ModelConfig(n_layer=6, n_head=16, d_model=1024, block_size=256)
    batch = 2  # 2 x 256 = 512 tokens per step
    arms = [
        ("dense", SparseConfig(density=1.0)),
        ("csr_5pct", SparseConfig(density=0.05, backend="csr")),
        ("masked_5pct", SparseConfig(density=0.05, backend="masked")),
        ("iso_params_10pct", SparseConfig(density=0.10, backend="csr", matching="params")),
        ("iso_params_10pct_block", SparseConfig(density=0.10, topology="block", block=ISO_BLOCK, backend="block",
                                                matching="params")),
        ("iso_params_10pct_block256", SparseConfig(density=0.10, topology="block", block=2 * ISO_BLOCK,
                                                   backend="block", matching="params")),
    ]
    built = {name: build_step(model_cfg, sparse, batch, device) for name, sparse in arms}
    for step, _ in built.values():
        step()
        step()  # warm-up: optimizer state, allocator
    times: dict[str, list[float]] = {name: [] for name in built}
    for _ in range(args.steps):  # round-robin, so that load changes on a shared machine hit every model alike
        for name, (step, _) in built.items():
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    dense_ms = 1e3 * statistics.median(times["dense"])
    where = describe(device, args.threads)
    for name, (_, info) in built.items():
        ms = 1e3 * statistics.median(times[name])
        print(json.dumps({"name": name, "ms_per_step": round(ms, 2), "speedup_vs_dense": round(dense_ms / ms, 3),
                          **info, **where}), flush=True)


if __name__ == "__main__":
    main()
