"""Iso-parameter matching: widen a sparse model until its nonzero count equals the dense reference's.

``matching=params`` scales d_model (in steps that keep n_head dividing it, and nm_m dividing it for N:M)
and d_ff by the same factor, so the model keeps its shape ratios (head count, MLP ratio) and only grows
wider; then d_ff alone is fine-tuned to land as close as possible to the reference. The dense reference is
the same config at density 1 (same n_layer, n_head, d_model, d_ff, vocab, context). At low density the
dense embeddings take much of that budget (45% of the matched model's nonzeros at 1%), so
``matching=masked_params`` matches only the masked layers' nonzeros to the dense model's masked-layer
count instead. Counts are exact for every topology but block (whole blocks, within one block per layer)
and the strictly biregular expander (feasible degrees; see topology.json). ``matching=shape`` keeps the
widths. Sizes are computed on the meta device: nothing is allocated.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from sparsecl.config import ModelConfig, SparseConfig
from sparsecl.config.sections import MIN_DEGREE_TOPOLOGIES
from sparsecl.model.gpt import GPT
from sparsecl.sparse.apply import layer_densities, layer_shapes
from sparsecl.sparse.topology import check_min_degree, kept_count

TOLERANCE = 0.02


@dataclass
class Matching:
    model: ModelConfig
    """The model config to build (widened for matching=params or masked_params, else the configured one)."""
    dense_reference_params: int
    """Parameters of the dense model with the configured widths."""
    nonzero_params: int
    """Parameters that exist in the model to build (masked-out weights do not)."""
    dense_reference_split: dict[str, int] = field(default_factory=dict)
    """The dense reference's parameters split into embeddings, masked-layer weights and the rest."""
    nonzero_split: dict[str, int] = field(default_factory=dict)
    """The same split of the model to build, from its shapes."""

    def summary(self) -> dict[str, Any]:
        return {"dense_reference_params": self.dense_reference_params, "matched_nonzero_params": self.nonzero_params,
                "matched_d_model": self.model.d_model, "matched_d_ff": self.model.hidden,
                "dense_reference_nonzero_split": self.dense_reference_split}


def _plan(model_cfg: ModelConfig, sparse_cfg: SparseConfig
          ) -> tuple[Any, dict[str, tuple[int, int]], dict[str, float]]:
    """A one-block meta model, every masked layer's shape (all blocks) and its allocated density."""
    with torch.device("meta"):  # one block is enough: the blocks are identical
        model = GPT(dataclasses.replace(model_cfg, n_layer=1))
    shapes = {n.replace("blocks.0.", f"blocks.{i}.", 1): s
              for i in range(model_cfg.n_layer) for n, s in layer_shapes(model, sparse_cfg).items()}
    return model, shapes, layer_densities(shapes, sparse_cfg)


def check_min_degree_feasible(model_cfg: ModelConfig, sparse_cfg: SparseConfig) -> None:
    """Raise the ConfigError drawing the masks would raise, from shapes alone (before any file is written)."""
    if sparse_cfg.min_degree == 0 or sparse_cfg.is_dense or sparse_cfg.topology not in MIN_DEGREE_TOPOLOGIES:
        return
    _, shapes, dens = _plan(resolve_matching(model_cfg, sparse_cfg).model, sparse_cfg)
    for n, (o, i) in shapes.items():
        if dens[n] < 1.0:
            check_min_degree(o, i, kept_count(o, i, dens[n], sparse_cfg), sparse_cfg.min_degree, n)


def split_counts(model_cfg: ModelConfig, sparse_cfg: SparseConfig) -> dict[str, int]:
    """Parameters that exist, from the shapes alone: {"embeddings", "masked", "other"} as in
    ``sparsecl.sparse.apply.nonzero_split`` (the masked layers' kept links come from the same allocation and
    the same per-topology counts as the masks themselves)."""
    model, shapes, dens = _plan(model_cfg, sparse_cfg)
    block = sum(p.numel() for n, p in model.named_parameters() if n.startswith("blocks."))
    total = sum(p.numel() for p in model.parameters()) + (model_cfg.n_layer - 1) * block
    embeddings = model.wte.weight.numel() + model.wpe.weight.numel()
    masked = sum(kept_count(o, i, dens[n], sparse_cfg) for n, (o, i) in shapes.items())
    other = total - embeddings - sum(o * i for o, i in shapes.values())
    return {"embeddings": embeddings, "masked": masked, "other": other}


def counts(model_cfg: ModelConfig, sparse_cfg: SparseConfig) -> tuple[int, int]:
    """(total parameters, parameters that exist) of a model, from its shapes alone."""
    split = split_counts(model_cfg, sparse_cfg)
    dense = split_counts(model_cfg, dataclasses.replace(sparse_cfg, density=1.0, min_degree=0))
    return sum(dense.values()), sum(split.values())


def _with(model_cfg: ModelConfig, d_model: int, d_ff: int) -> ModelConfig:
    return dataclasses.replace(model_cfg, d_model=d_model, d_ff=d_ff)


def resolve_matching(model_cfg: ModelConfig, sparse_cfg: SparseConfig) -> Matching:
    """The model to build for this sparse config, and the dense reference count.

    ``params`` matches the total nonzero count; ``masked_params`` matches only the masked layers' nonzeros
    (the embeddings then grow with the width and are not counted against the budget).
    """
    dense_split = split_counts(model_cfg, SparseConfig(density=1.0, targets=sparse_cfg.targets))
    dense_total = sum(dense_split.values())
    if sparse_cfg.matching == "shape" or sparse_cfg.is_dense:
        counts = split_counts(model_cfg, sparse_cfg)
        return Matching(model_cfg, dense_total, sum(counts.values()), dense_split, counts)
    only_masked = sparse_cfg.matching == "masked_params"
    target = dense_split["masked"] if only_masked else dense_total
    step = model_cfg.n_head
    if sparse_cfg.topology == "nm":
        step = step * sparse_cfg.nm_m // math.gcd(step, sparse_cfg.nm_m)
    ff_step = sparse_cfg.nm_m if sparse_cfg.topology == "nm" else 1
    c0, f0 = model_cfg.d_model, model_cfg.hidden

    @functools.cache
    def split(c: int, f: int) -> dict[str, int]:
        return split_counts(_with(model_cfg, c, f), sparse_cfg)

    def nnz(c: int, f: int) -> int:
        """The count being matched: masked-layer nonzeros, or every parameter that exists."""
        return split(c, f)["masked"] if only_masked else sum(split(c, f).values())

    def done(c: int, f: int) -> Matching:
        return Matching(_with(model_cfg, c, 0 if f == 4 * c else f), dense_total, sum(split(c, f).values()),
                        dense_split, split(c, f))

    def ff_for(c: int) -> int:
        return max(ff_step, round(f0 * c / c0 / ff_step) * ff_step)

    # 1) the width multiple of `step` whose ratio-preserving model is closest (nnz grows with width)
    lo, hi = max(1, c0 // step), max(2, c0 // step)
    while nnz(hi * step, ff_for(hi * step)) < target:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if nnz(mid * step, ff_for(mid * step)) < target:
            lo = mid
        else:
            hi = mid
    c = min((lo * step, hi * step), key=lambda w: abs(nnz(w, ff_for(w)) - target))
    # 2) fine-tune d_ff alone to the closest count. The exact-biregular expander's feasible densities depend
    #    on gcd(d_ff, d_model), so its count is not monotone in d_ff: try the d_ff within d_model of the
    #    ratio that are multiples of d_model / q (q <= 16), whose feasible densities are fine-grained.
    if sparse_cfg.topology == "expander" and sparse_cfg.expander_degree == "exact":
        cands = {ff_for(c)} | {c * p // q for q in range(1, 17) for p in range(1, 8 * q)
                               if (c * p) % q == 0 and abs(c * p // q - ff_for(c)) <= c}
        f = min(cands, key=lambda x: (abs(nnz(c, x) - target), abs(x - ff_for(c))))
        return done(c, f)
    flo, fhi = ff_step, max(ff_for(c), ff_step)
    while nnz(c, fhi) < target:
        flo, fhi = fhi, fhi * 2
    while fhi - flo > ff_step:
        mid = (flo + fhi) // (2 * ff_step) * ff_step
        if mid in (flo, fhi):
            break
        if nnz(c, mid) < target:
            flo = mid
        else:
            fhi = mid
    f = min((flo, fhi), key=lambda x: abs(nnz(c, x) - target))
    if abs(nnz(c, ff_for(c)) - target) <= abs(nnz(c, f) - target):
        f = ff_for(c)
    return done(c, f)
