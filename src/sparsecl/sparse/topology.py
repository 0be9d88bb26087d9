"""Mask generators: one function per topology, all drawing from a caller-supplied generator.

Every function has the signature ``fn(out_features, in_features, density, gen, cfg) -> BoolTensor``
of shape (out, in). They never touch the global RNG, so a mask depends only on (seed, layer name).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sparsecl.config import SparseConfig

MaskFn = Callable[[int, int, float, torch.Generator, "SparseConfig"], torch.Tensor]
TOPOLOGIES: dict[str, MaskFn] = {}


def register(name: str) -> Callable[[MaskFn], MaskFn]:
    def deco(fn: MaskFn) -> MaskFn:
        TOPOLOGIES[name] = fn
        return fn

    return deco


def layer_generator(seed: int, layer_name: str) -> torch.Generator:
    """A CPU generator seeded by a stable hash of (seed, layer name): same mask in every process."""
    digest = hashlib.sha256(f"{seed}/{layer_name}".encode()).digest()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def n_kept(out_features: int, in_features: int, density: float) -> int:
    return max(1, min(out_features * in_features, round(density * out_features * in_features)))


@register("dense")
def dense(out_features: int, in_features: int, density: float, gen: torch.Generator, cfg: SparseConfig
          ) -> torch.Tensor:
    return torch.ones(out_features, in_features, dtype=torch.bool)


@register("er")
def erdos_renyi(out_features: int, in_features: int, density: float, gen: torch.Generator,
                cfg: SparseConfig) -> torch.Tensor:
    """Exactly round(rho * out * in) connections, placed uniformly at random."""
    k = n_kept(out_features, in_features, density)
    idx = torch.randperm(out_features * in_features, generator=gen)[:k]
    mask = torch.zeros(out_features * in_features, dtype=torch.bool)
    mask[idx] = True
    return mask.view(out_features, in_features)


def make_mask(topology: str, out_features: int, in_features: int, density: float, seed: int,
              layer_name: str, cfg: SparseConfig) -> torch.Tensor:
    if density >= 1.0:
        return torch.ones(out_features, in_features, dtype=torch.bool)
    gen = layer_generator(seed, layer_name)
    return TOPOLOGIES[topology](out_features, in_features, density, gen, cfg)
