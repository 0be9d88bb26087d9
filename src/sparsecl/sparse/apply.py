"""Attach masks to a built model, from outside it, in one fixed order.

Layer names are '<module>.<part>', e.g. 'blocks.0.attn.q'; fused q/k/v are separate layers for masks and
for allocation. Masked rows are rescaled so each unit's init std is 1/sqrt(its actual fan-in).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from sparsecl.config import SparseConfig
from sparsecl.model.gpt import GPT, MaskableLinear
from sparsecl.sparse.allocation import ALLOCATIONS
from sparsecl.sparse.backends import swap_backend
from sparsecl.sparse.csr import CSRLinear
from sparsecl.sparse.topology import make_mask


@dataclass
class LayerInfo:
    name: str
    shape: tuple[int, int]
    density: float
    nonzero: int
    target: float | None = None
    """The density the allocation asked for (None: not recorded); ``density`` is the realised one."""
    dead_rows: int | None = None
    """Output units with no input link (None: not recorded)."""
    dead_cols: int | None = None
    """Inputs that feed no output (None: not recorded)."""


def masked_layers(model: GPT, cfg: SparseConfig) -> dict[str, tuple[MaskableLinear, slice]]:
    """Layer name -> (module, row slice) for every projection the config masks."""
    out = {}
    for mod_name, mod in model.maskable().items():
        for part, rows in mod.part_rows():
            if part in cfg.targets:
                out[f"{mod_name}.{part}"] = (mod, rows)
    return out


def layer_shapes(model: GPT, cfg: SparseConfig) -> dict[str, tuple[int, int]]:
    """Layer name -> (out, in) of every masked projection (works on a meta-device model)."""
    return {n: (rows.stop - rows.start, mod.in_features) for n, (mod, rows) in masked_layers(model, cfg).items()}


def layer_densities(shapes: dict[str, tuple[int, int]], cfg: SparseConfig) -> dict[str, float]:
    """The density each layer is drawn at: the global density split by ``cfg.allocation``."""
    return ALLOCATIONS[cfg.allocation](shapes, cfg.density)


def draw_layers(shapes: dict[str, tuple[int, int]], densities: dict[str, float], cfg: SparseConfig, seed: int
                ) -> Iterator[tuple[str, float, torch.Tensor]]:
    """(layer name, density, (out, in) CPU mask) for each named shape, drawn by ``cfg.topology`` at its density
    from the generator keyed by (seed, layer name): the density -> mask stage every mask comes from.

    Lazy, so that only one layer's mask is extra in memory."""
    for n, (o, i) in shapes.items():
        yield n, densities[n], make_mask(cfg.topology, o, i, densities[n], seed, n, cfg)


def draw_masks(model: GPT, cfg: SparseConfig, seed: int) -> Iterator[tuple[str, float, torch.Tensor]]:
    """(layer name, allocated density, (out, in) CPU mask) for every masked layer: shape -> density -> mask.

    The one place the pipeline runs for a model; ``apply_sparsity`` attaches the masks, ``sparsecl topology``
    reports them without building weights, and ``sparse.matching`` counts from the same shapes and densities.
    A layer a method adds later (``expand``) skips the allocation and enters at ``draw_layers``.
    """
    shapes = layer_shapes(model, cfg)
    return draw_layers(shapes, layer_densities(shapes, cfg), cfg, seed)


@torch.no_grad()
def apply_sparsity(model: GPT, cfg: SparseConfig, seed: int, tokens: int | None = None) -> list[LayerInfo]:
    """Draw and attach every mask, install each layer's backend (``tokens`` per step inform backend=auto);
    return per-layer density and nonzero counts."""
    layers = masked_layers(model, cfg)
    infos = []
    for name, rho, sub in draw_masks(model, cfg, seed):
        mod, rows = layers[name]
        out_f, in_f = sub.shape
        if rho >= 1.0:
            infos.append(LayerInfo(name, (out_f, in_f), 1.0, out_f * in_f, rho, 0, 0))
            continue
        w = mod.dense_weight().detach().clone()
        mask = torch.ones_like(w, dtype=torch.bool) if mod.mask is None else mod.mask.clone()
        mask[rows] = sub.to(mask.device)
        fan_in = sub.sum(1, keepdim=True).clamp(min=1).to(w.dtype)
        w[rows] *= torch.sqrt(in_f / fan_in).to(w.device)
        mod.set_weight(w, mask)  # zeros off the mask, on either backend
        nnz = int(sub.sum())
        (dead_r, dead_c), = dead_units({name: sub}).values()
        infos.append(LayerInfo(name, (out_f, in_f), nnz / (out_f * in_f), nnz, rho, dead_r, dead_c))
    swap_backend(model, cfg.backend, tokens, cfg.block)  # after the masks: csr layers take their values from W * M
    return infos


def structural_counts(model: GPT) -> tuple[int, int]:
    """(total parameters, parameters that exist): masked-out weights do not exist."""
    total = sum(p.numel() for p in model.parameters())
    total += sum(m.out_features * m.in_features - m.nnz for m in model.maskable().values()
                 if isinstance(m, CSRLinear))  # csr layers store only their kept values
    removed = sum(int((~m.mask).sum()) for m in model.maskable().values() if m.mask is not None)
    return total, total - removed


def layer_masks(model: GPT, cfg: SparseConfig) -> dict[str, torch.Tensor]:
    """Layer name -> (out, in) bool mask of every masked projection (all ones where a layer has no mask)."""
    out = {}
    for name, (mod, rows) in masked_layers(model, cfg).items():
        out[name] = (torch.ones(rows.stop - rows.start, mod.in_features, dtype=torch.bool) if mod.mask is None
                     else mod.mask[rows].detach().cpu())
    return out


def dead_units(masks: dict[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """Layer name -> (rows with no input connection, columns feeding no output) of each mask."""
    return {n: (int((~m.any(1)).sum()), int((~m.any(0)).sum())) for n, m in masks.items()}


def dead_unit_fraction(masks: dict[str, torch.Tensor]) -> float:
    """Output units (rows) with no input connection, as a fraction of all masked layers' rows.

    At low density ER leaves about (1 - rho)^fan_in of its rows dead (DESIGN §6); those units only carry
    their bias, so a sparse arm with many of them has less capacity than its density says.
    """
    rows = sum(m.shape[0] for m in masks.values())
    return sum(d for d, _ in dead_units(masks).values()) / rows if rows else 0.0


def nonzero_split(model: GPT, cfg: SparseConfig) -> dict[str, int]:
    """Parameters that exist, split into token+position embeddings, masked-layer weights and the rest.

    'masked' counts the kept weights of the projections ``cfg.targets`` names (all of them in a dense
    model), 'other' LayerNorms, biases and untargeted projections; the three sum to the nonzero count of
    ``structural_counts`` (the output head is tied to the token embedding and counted once).
    """
    embeddings = model.wte.weight.numel() + model.wpe.weight.numel()
    masked = sum(int(m.sum()) for m in layer_masks(model, cfg).values())
    return {"embeddings": embeddings, "masked": masked, "other": structural_counts(model)[1] - embeddings - masked}


def masked_params_total(model: GPT, cfg: SparseConfig) -> int:
    return sum((rows.stop - rows.start) * mod.in_features for mod, rows in masked_layers(model, cfg).values())
