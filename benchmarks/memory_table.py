"""Training memory per GPU for the scale preset (DESIGN §4.4), from sparsecl.train.memory's formula, checked
against measurements on this CPU at sizes that fit.

Measured rows (source "measured", one per small config x dtype x activation checkpointing): a real training
step of sparsecl's GPT (fused AdamW, bf16 autocast or fp32, blocks wrapped in torch.utils.checkpoint when
checkpointing) in this process. ``saved_bytes``: what autograd saved for backward, summed over distinct
storages (without checkpointing; it must equal the formula's activations + autocast copies), ``rss_peak_bytes``:
the rise of the peak resident set during the step over the resident set before it (VmHWM reset through
/proc/self/clear_refs; the script re-executes itself with MALLOC_MMAP_THRESHOLD_=65536 so that freed tensors
leave the resident set), against the formula's peak minus weights and optimizer state, which are measured
exactly from the tensors (``static_bytes``).

Formula rows (source "formula"): the three scale arms (block 1024, byte vocabulary) x DDP (sharding none) or
FSDP (full) x ranks x fp32 / bf16 autocast x checkpointing, micro-batch = global batch 32 / ranks, in GiB.

  OMP_WAIT_POLICY=PASSIVE python benchmarks/memory_table.py [--quick] [--ranks 1 8]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys

if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":  # must be set before the C library's malloc starts
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _device import describe  # noqa: E402
from torch.utils.checkpoint import checkpoint  # noqa: E402

from sparsecl.train.memory import SCALE_ARMS, GiB, Shape, estimate  # noqa: E402

ROW_KEYS = ("name", "source", "dtype", "checkpointing", "ranks", "sharding", "micro_batch", "params", "peak_bytes")
QUICK_ARGS = ["--quick"]
GLOBAL_BATCH = 32  # the scale preset's train.batch_size
MEASURED = [  # (n_layer, n_head, d_model, block_size, micro_batch)
    (2, 4, 128, 128, 8), (4, 4, 256, 256, 4), (6, 6, 384, 256, 8)]
QUICK_MEASURED = [(2, 2, 64, 64, 4)]


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(s: Shape, micro_batch: int, dtype: str, ckpt: bool) -> dict[str, int | None]:
    from sparsecl.config import ModelConfig
    from sparsecl.model.gpt import GPT

    torch.manual_seed(0)
    m = GPT(ModelConfig(n_layer=s.n_layer, n_head=s.n_head, d_model=s.d_model, block_size=s.block_size,
                        vocab_size=s.vocab))
    opt = torch.optim.AdamW(m.parameters(), fused=True)
    x = torch.randint(0, s.vocab, (micro_batch, s.block_size))
    y = torch.randint(0, s.vocab, (micro_batch, s.block_size))

    def loss() -> torch.Tensor:
        if not ckpt:
            return m.loss(x, y)
        h = m.drop(m.wte(x) + m.wpe(torch.arange(s.block_size)))
        for block in m.blocks:
            h = checkpoint(block, h, use_reentrant=False)
        logits = m.lm_head(m.ln_f(h))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))

    def step(hooks: tuple | None = None) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            if hooks is None:
                out = loss()
            else:
                with torch.autograd.graph.saved_tensors_hooks(*hooks):
                    out = loss()
        out.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # creates the AdamW state
    saved: int | None = None
    if not ckpt:
        params = {p.untyped_storage().data_ptr() for p in m.parameters()}
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            st = t.untyped_storage()
            if st.data_ptr() not in params:
                storages[st.data_ptr()] = st.nbytes()
            return t

        step((pack, lambda t: t))
        saved = sum(storages.values())
    gc.collect()
    base = _rss("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    step()
    peak = _rss("VmHWM:") - base
    static = sum(p.numel() * p.element_size() for p in m.parameters()) + sum(
        v.numel() * v.element_size() for st in opt.state.values() for v in st.values() if v.dim() > 0)
    return {"saved_bytes": saved, "rss_peak_bytes": peak, "static_bytes": static}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one tiny measured config (a smoke run)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 8], help="GPUs per run in the formula rows")
    args = ap.parse_args()
    torch.set_num_threads(1)
    where = describe(torch.device("cpu"), 1)
    for n_layer, n_head, d_model, block_size, mb in QUICK_MEASURED if args.quick else MEASURED:
        s = Shape(n_layer=n_layer, n_head=n_head, d_model=d_model, block_size=block_size)
        for dtype in ("float32", "bfloat16"):
            for ckpt in (False, True):
                e = estimate(s, mb, 1, "none", ckpt, dtype)  # type: ignore[arg-type]
                got = measure(s, mb, dtype, ckpt)
                gc.collect()  # the measured model and optimizer are gone before the next baseline
                dynamic = e["peak"] - e["weights"] - e["optimizer"]
                row = {"name": f"L{n_layer}_C{d_model}_T{block_size}_b{mb}", "source": "measured", "dtype": dtype,
                       "checkpointing": ckpt, "ranks": 1, "sharding": "none", "micro_batch": mb,
                       "params": e["params"], "peak_bytes": e["peak"], **got,
                       "formula_static_bytes": e["weights"] + e["optimizer"],
                       "formula_saved_bytes": None if ckpt else e["activations"] + e["autocast_copies"],
                       "formula_dynamic_bytes": dynamic,
                       "rss_over_formula": round(got["rss_peak_bytes"] / dynamic, 3)}  # type: ignore[operator]
                if got["saved_bytes"] is not None:
                    row["saved_over_formula"] = round(got["saved_bytes"] / row["formula_saved_bytes"], 4)
                print(json.dumps({**row, **where}), flush=True)
    for name, s in SCALE_ARMS.items():
        for ranks in args.ranks:
            for sharding in ("none", "full") if ranks > 1 else ("none",):
                for dtype in ("float32", "bfloat16"):
                    for ckpt in (False, True):
                        mb = max(1, GLOBAL_BATCH // ranks)
                        e = estimate(s, mb, ranks, sharding, ckpt, dtype)  # type: ignore[arg-type]
                        gib = {f"{k}_gib": round(v / GiB, 2) for k, v in e.items() if k != "params"}
                        print(json.dumps({"name": name, "source": "formula", "dtype": dtype, "checkpointing": ckpt,
                                          "ranks": ranks, "sharding": sharding, "strategy": (
                                              "fsdp" if sharding == "full" else "ddp" if ranks > 1 else "single"),
                                          "micro_batch": mb, "params": e["params"], "peak_bytes": e["peak"],
                                          **gib, **where}), flush=True)


if __name__ == "__main__":
    main()
