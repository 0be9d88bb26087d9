"""Attach masks to a built model, from outside it, in one fixed order.

Layer names are '<module>.<part>', e.g. 'blocks.0.attn.q'; fused q/k/v are separate layers for masks and
for allocation. Masked rows are rescaled so each unit's init std is 1/sqrt(its actual fan-in).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsecl.config import SparseConfig
from sparsecl.model.gpt import GPT, MaskableLinear
from sparsecl.sparse.allocation import ALLOCATIONS
from sparsecl.sparse.topology import make_mask


@dataclass
class LayerInfo:
    name: str
    shape: tuple[int, int]
    density: float
    nonzero: int


def masked_layers(model: GPT, cfg: SparseConfig) -> dict[str, tuple[MaskableLinear, slice]]:
    """Layer name -> (module, row slice) for every projection the config masks."""
    out = {}
    for mod_name, mod in model.maskable().items():
        for part, rows in mod.part_rows():
            if part in cfg.targets:
                out[f"{mod_name}.{part}"] = (mod, rows)
    return out


@torch.no_grad()
def apply_sparsity(model: GPT, cfg: SparseConfig, seed: int) -> list[LayerInfo]:
    """Draw and attach every mask; return per-layer density and nonzero counts."""
    layers = masked_layers(model, cfg)
    shapes = {n: (rows.stop - rows.start, mod.in_features) for n, (mod, rows) in layers.items()}
    densities = ALLOCATIONS[cfg.allocation](shapes, cfg.density)
    infos = []
    for name, (mod, rows) in layers.items():
        out_f, in_f = shapes[name]
        rho = densities[name]
        if rho >= 1.0:
            infos.append(LayerInfo(name, shapes[name], 1.0, out_f * in_f))
            continue
        sub = make_mask(cfg.topology, out_f, in_f, rho, seed, name, cfg)
        w = mod.dense_weight().detach().clone()
        mask = torch.ones_like(w, dtype=torch.bool) if mod.mask is None else mod.mask.clone()
        mask[rows] = sub.to(mask.device)
        fan_in = sub.sum(1, keepdim=True).clamp(min=1).to(w.dtype)
        w[rows] *= torch.sqrt(in_f / fan_in).to(w.device)
        mod.set_weight(w, mask)  # zeros off the mask, on either backend
        nnz = int(sub.sum())
        infos.append(LayerInfo(name, shapes[name], nnz / (out_f * in_f), nnz))
    from sparsecl.sparse.csr import swap_backend

    swap_backend(model, cfg.backend)  # after the masks: csr layers take their values from W * M
    return infos


def structural_counts(model: GPT) -> tuple[int, int]:
    """(total parameters, parameters that exist): masked-out weights do not exist."""
    from sparsecl.sparse.csr import CSRLinear

    total = sum(p.numel() for p in model.parameters())
    total += sum(m.out_features * m.in_features - m.nnz for m in model.maskable().values()
                 if isinstance(m, CSRLinear))  # csr layers store only their kept values
    removed = sum(int((~m.mask).sum()) for m in model.maskable().values() if m.mask is not None)
    return total, total - removed


def masked_params_total(model: GPT, cfg: SparseConfig) -> int:
    return sum((rows.stop - rows.start) * mod.in_features for mod, rows in masked_layers(model, cfg).values())
