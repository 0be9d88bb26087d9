"""Iso-parameter matching: widen a sparse model until its nonzero count equals the dense reference's.

``matching=params`` scales d_model (in steps that keep n_head dividing it, and nm_m dividing it for N:M)
and d_ff by the same factor, so the model keeps its shape ratios (head count, MLP ratio) and only grows
wider; then d_ff alone is fine-tuned to land as close as possible to the reference. The dense reference is
the same config at density 1 (same n_layer, n_head, d_model, d_ff, vocab, context). Counts are exact for
every topology whose kept count is round(rho * out * in) per layer (er, brf, nm); expander and block
round to feasible degrees or whole blocks, so their real count can differ slightly (see topology.json).
``matching=shape`` keeps the widths. Sizes are computed on the meta device: nothing is allocated.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import torch

from sparsecl.config import ModelConfig, SparseConfig
from sparsecl.sparse.allocation import ALLOCATIONS
from sparsecl.sparse.topology import biregular_degrees, n_kept

TOLERANCE = 0.02


@dataclass
class Matching:
    model: ModelConfig
    """The model config to build (widened for matching=params, else the configured one)."""
    dense_reference_params: int
    """Parameters of the dense model with the configured widths."""
    nonzero_params: int
    """Parameters that exist in the model to build (masked-out weights do not)."""

    def summary(self) -> dict[str, Any]:
        return {"dense_reference_params": self.dense_reference_params, "matched_nonzero_params": self.nonzero_params,
                "matched_d_model": self.model.d_model, "matched_d_ff": self.model.hidden}


def counts(model_cfg: ModelConfig, sparse_cfg: SparseConfig) -> tuple[int, int]:
    """(total parameters, parameters that exist) of a model, from its shapes alone."""
    from sparsecl.model.gpt import GPT
    from sparsecl.sparse.apply import masked_layers

    with torch.device("meta"):  # one block is enough: the blocks are identical
        model = GPT(dataclasses.replace(model_cfg, n_layer=1))
    n_layer = model_cfg.n_layer
    block = sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks."))
    total = sum(p.numel() for p in model.parameters()) + (n_layer - 1) * block
    if sparse_cfg.is_dense:
        return total, total
    layers = masked_layers(model, sparse_cfg)
    shapes = {n.replace("blocks.0.", f"blocks.{i}.", 1): (rows.stop - rows.start, mod.in_features)
              for i in range(n_layer) for n, (mod, rows) in layers.items()}
    dens = ALLOCATIONS[sparse_cfg.allocation](shapes, sparse_cfg.density)
    removed = sum(o * i - _kept(o, i, dens[n], sparse_cfg) for n, (o, i) in shapes.items())
    return total, total - removed


def _kept(out_f: int, in_f: int, rho: float, cfg: SparseConfig) -> int:
    """Links a layer keeps: exact for er, brf, nm and expander; block is within one block of it."""
    if rho >= 1.0:
        return out_f * in_f
    if cfg.topology == "expander":
        return biregular_degrees(out_f, in_f, rho)[0] * out_f
    return n_kept(out_f, in_f, rho)


def _with(model_cfg: ModelConfig, d_model: int, d_ff: int) -> ModelConfig:
    return dataclasses.replace(model_cfg, d_model=d_model, d_ff=d_ff)


def resolve_matching(model_cfg: ModelConfig, sparse_cfg: SparseConfig) -> Matching:
    """The model to build for this sparse config, and the dense reference count."""
    dense_total, _ = counts(model_cfg, SparseConfig(density=1.0))
    if sparse_cfg.matching == "shape" or sparse_cfg.is_dense:
        return Matching(model_cfg, dense_total, counts(model_cfg, sparse_cfg)[1])
    step = model_cfg.n_head
    if sparse_cfg.topology == "nm":
        step = step * sparse_cfg.nm_m // math.gcd(step, sparse_cfg.nm_m)
    ff_step = sparse_cfg.nm_m if sparse_cfg.topology == "nm" else 1
    c0, f0 = model_cfg.d_model, model_cfg.hidden

    @functools.cache
    def nnz(c: int, f: int) -> int:
        return counts(_with(model_cfg, c, f), sparse_cfg)[1]

    def ff_for(c: int) -> int:
        return max(ff_step, round(f0 * c / c0 / ff_step) * ff_step)

    # 1) the width multiple of `step` whose ratio-preserving model is closest (nnz grows with width)
    lo, hi = max(1, c0 // step), max(2, c0 // step)
    while nnz(hi * step, ff_for(hi * step)) < dense_total:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if nnz(mid * step, ff_for(mid * step)) < dense_total:
            lo = mid
        else:
            hi = mid
    c = min((lo * step, hi * step), key=lambda w: abs(nnz(w, ff_for(w)) - dense_total))
    # 2) fine-tune d_ff alone to the closest count. The expander's feasible densities depend on
    #    gcd(d_ff, d_model), so its count is not monotone in d_ff: try the d_ff within d_model of the
    #    ratio that are multiples of d_model / q (q <= 16), whose feasible densities are fine-grained.
    if sparse_cfg.topology == "expander":
        cands = {ff_for(c)} | {c * p // q for q in range(1, 17) for p in range(1, 8 * q)
                               if (c * p) % q == 0 and abs(c * p // q - ff_for(c)) <= c}
        f = min(cands, key=lambda x: (abs(nnz(c, x) - dense_total), abs(x - ff_for(c))))
        return Matching(_with(model_cfg, c, 0 if f == 4 * c else f), dense_total, nnz(c, f))
    flo, fhi = ff_step, max(ff_for(c), ff_step)
    while nnz(c, fhi) < dense_total:
        flo, fhi = fhi, fhi * 2
    while fhi - flo > ff_step:
        mid = (flo + fhi) // (2 * ff_step) * ff_step
        if mid in (flo, fhi):
            break
        if nnz(c, mid) < dense_total:
            flo = mid
        else:
            fhi = mid
    f = min((flo, fhi), key=lambda x: abs(nnz(c, x) - dense_total))
    if abs(nnz(c, ff_for(c)) - dense_total) <= abs(nnz(c, f) - dense_total):
        f = ff_for(c)
    matched = _with(model_cfg, c, 0 if f == 4 * c else f)
    return Matching(matched, dense_total, nnz(c, f))
