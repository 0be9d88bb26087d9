"""Which sparse backend each masked layer runs on, and the swap that installs it.

Backends: 'masked' (dense weight, exact zeros off the mask, masked weight gradient), 'csr' (kept values,
sparse CSR kernels), 'block' (kept values, one GEMM per block row over b x b tiles), 'semi24' (2:4
semi-structured kernels on CUDA sm80+, for nm 2:4 masks; masked elsewhere) and 'auto', which picks per
layer from its shape, realised density, mask structure, the tokens per step and the device, by the
measured break-even densities below. A sparse backend is chosen only where its measurement beat dense
(masked costs about dense), so auto is never slower than masked at the measured points.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from sparsecl.model.gpt import MaskableLinear
from sparsecl.sparse.block import BlockLinear
from sparsecl.sparse.csr import CSRLinear
from sparsecl.sparse.semi import SemiStructuredLinear

BACKENDS = ("masked", "csr", "block", "semi24", "auto")

CSR_BREAK_EVEN = {  # (CPU kernel level, tokens per step at most) -> highest density where csr beats dense
    ("AVX512", 1024): 0.15, ("AVX512", 1 << 62): 0.10,
    ("AVX2", 1024): 0.08, ("AVX2", 1 << 62): 0.05,
    ("DEFAULT", 1 << 62): 0.05,
}
"""csr fwd+bwd time vs dense (benchmarks/sparse_linear.py, 2 threads, 1024-4096 wide): on AVX-512 csr is
~2x dense at 5% and breaks even near 15-20% at 512 tokens; on AVX2 at 2,048 tokens it is 1.15x dense speed
at 5% and 0.78x at 10% (issue 14), so its break-even is ~6-10% there, lower with more tokens."""

BLOCK_BREAK_EVEN = {16: 0.03, 32: 0.15, 64: 0.25, 128: 0.5}
"""Tile size b -> highest density where the block backend beats dense on CPU (2 threads, AVX2, 1024-12800
wide, 512 tokens: at 10% b = 16 ran 0.9-1.1x dense speed, b = 32 1.2-2.8x; b = 128, one GEMM per tile, ran
1.12-1.21x at 50% and 0.72-0.88x at 70%). Larger tiles are more efficient."""

MIN_SPARSE_WORK = 1 << 24
"""tokens x out x in below which a sparse kernel's fixed per-call cost outweighs its saving: masked."""

BLOCK_MIN_FILL = 0.9
"""auto uses the block backend only where the kept weights fill at least this share of their tiles."""


@dataclass(frozen=True)
class Choice:
    backend: str
    reason: str


def cpu_level() -> str:
    """'AVX512', 'AVX2' or 'DEFAULT': the vector kernel level PyTorch dispatches to on this CPU."""
    cap = torch.backends.cpu.get_cpu_capability()
    return "AVX512" if cap.startswith("AVX512") else ("AVX2" if cap == "AVX2" else "DEFAULT")


def csr_break_even(tokens: int, level: str | None = None) -> float:
    level = level or cpu_level()
    rows = sorted((t, d) for (lv, t), d in CSR_BREAK_EVEN.items() if lv == level) or \
        sorted((t, d) for (lv, t), d in CSR_BREAK_EVEN.items() if lv == "DEFAULT")
    return next(d for t, d in rows if tokens <= t)


def block_break_even(block: int) -> float:
    fitting = [d for b, d in sorted(BLOCK_BREAK_EVEN.items()) if b <= block]
    return fitting[-1] if fitting else 0.0


def tile_fill(mask: torch.Tensor, block: int) -> float:
    """Kept weights over the entries of the b x b tiles that hold any: 1.0 for a topology=block mask."""
    o, i = mask.shape
    nr, nc = -(-o // block), -(-i // block)
    padded = torch.zeros(nr * block, nc * block, dtype=torch.bool, device=mask.device)
    padded[:o, :i] = mask
    tiles = int(padded.view(nr, block, nc, block).any(3).any(1).sum())
    return int(mask.sum()) / (tiles * block * block) if tiles else 0.0


def semi24_supported(device: torch.device) -> bool:
    """2:4 semi-structured kernels: CUDA compute capability 8.0 or newer."""
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)


def is_24(mask: torch.Tensor) -> bool:
    """Every group of 4 consecutive inputs keeps exactly 2 (the pattern the 2:4 kernels store)."""
    return mask.shape[1] % 4 == 0 and bool((mask.view(mask.shape[0], -1, 4).sum(2) == 2).all())


def explain_backend(backend: str, mask: torch.Tensor, device: torch.device, tokens: int | None = None,
                    block: int = 16) -> Choice:
    """The backend one layer runs on and why. ``tokens``: tokens per step (None: 512)."""
    if backend in ("masked", "csr", "block"):
        return Choice(backend, "configured")
    if backend == "semi24":
        if not semi24_supported(device):
            return Choice("masked", f"semi24 needs CUDA sm80+, this is {device.type}: masked fallback")
        if not is_24(mask):
            return Choice("masked", "semi24 needs a 2:4 mask (topology=nm, nm_n=2, nm_m=4): masked fallback")
        return Choice("semi24", "configured")
    tokens = 512 if tokens is None else tokens
    density = float(mask.float().mean())
    if device.type != "cpu":
        if semi24_supported(device) and is_24(mask):
            return Choice("semi24", "2:4 mask on CUDA sm80+: semi-structured kernels")
        return Choice("masked", "cuSPARSE lost to dense cuBLAS at every density measured (H100, fp32): masked")
    work = tokens * mask.shape[0] * mask.shape[1]
    if work < MIN_SPARSE_WORK:
        return Choice("masked", f"tokens x out x in = {work} < {MIN_SPARSE_WORK}: sparse kernel overhead dominates")
    if tile_fill(mask, block) >= BLOCK_MIN_FILL and density <= block_break_even(block):
        return Choice("block", f"{block}x{block} tiles, density {density:.3f} <= block break-even "
                               f"{block_break_even(block)} on CPU")
    level = cpu_level()
    be = csr_break_even(tokens, level)
    if density <= be:
        return Choice("csr", f"density {density:.3f} <= csr break-even {be} ({level}, {tokens} tokens/step)")
    return Choice("masked", f"density {density:.3f} > csr break-even {be} ({level}, {tokens} tokens/step)")


def choose_backend(backend: str, density: float, device: torch.device, mask: torch.Tensor | None = None,
                   tokens: int | None = None, block: int = 16) -> str:
    """The backend name only (see ``explain_backend``); without a mask, a uniform one at ``density`` is assumed."""
    if mask is None:
        if backend != "auto":
            return explain_backend(backend, torch.zeros(1, 4, dtype=torch.bool), device, tokens, block).backend
        be = csr_break_even(512 if tokens is None else tokens)
        return "csr" if device.type == "cpu" and density <= be else "masked"
    return explain_backend(backend, mask, device, tokens, block).backend


def swap_backend(model: nn.Module, backend: str, tokens: int | None = None, block: int = 16) -> dict[str, str]:
    """Replace every masked layer by the backend's layer class where ``backend`` says so (and back).

    Call before the optimizer is built: the swapped modules carry new parameter objects. Each layer keeps
    the reason of its choice (``backend_reason``, shown in topology.json). Returns module name -> backend.
    """
    chosen = {}
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, MaskableLinear) or mod.mask is None:
            continue
        mask = mod._mask if isinstance(mod, CSRLinear) else mod.mask
        choice = explain_backend(backend, mask, mask.device, tokens, block)
        if backend == "semi24" and choice.backend != "semi24":
            warnings.warn(f"{name}: {choice.reason}", stacklevel=2)
        have = backend_name(mod)
        new: MaskableLinear | None = None
        if choice.backend != have or (have == "block" and getattr(mod, "block", block) != block):
            plain = mod.to_masked() if have in ("csr", "block", "semi24") else mod  # type: ignore[operator]
            if choice.backend == "csr":
                new = CSRLinear.from_masked(plain)
            elif choice.backend == "block":
                new = BlockLinear.from_masked(plain, block)
            elif choice.backend == "semi24":
                new = SemiStructuredLinear.from_masked(plain)
            else:
                new = plain
        target = mod if new is None else new
        setattr(target, "backend_reason", choice.reason)  # noqa: B010 (not a declared attribute)
        if new is not None:
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
        chosen[name] = choice.backend
    return chosen


def backend_name(mod: nn.Module) -> str:
    """'masked', 'csr', 'block', 'semi24' or 'dense' (no mask): what a layer runs on."""
    if isinstance(mod, BlockLinear):
        return "block"
    if isinstance(mod, CSRLinear):
        return "csr"
    if isinstance(mod, SemiStructuredLinear):
        return "semi24"
    return "dense" if getattr(mod, "mask", None) is None else "masked"
