"""Block expansion in the LLaMA-Pro manner (Wu et al. 2024), once per phase after the first.

At the start of phase p >= 2 the current stack of N blocks is split into ``new_blocks`` equal groups and a
new block is inserted after each group's last block. A new block copies the block below it (LayerNorms and
q/k/v/up weights) and has its output projections (attn.o and mlp.down, weights and biases) set to zero, so
the residual stream, and with it the model's function, is unchanged at the moment of expansion. Then either
only the blocks added in this phase train (LLaMA-Pro) or all blocks do.

Sparse runs: every new layer gets a fresh mask drawn by the run's topology under its own name
('expand.p<phase>.n<j>.<module>.<part>'), with the same number of connections as the source layer; the
copied weights are restricted to it. New layers keep their source layer's backend (masked or csr); weights
and masks are set through ``set_weight``, the one edit both backends honour.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch

from sparsecl.errors import ConfigError
from sparsecl.methods.base import Method, TrainerView
from sparsecl.methods.common import freeze
from sparsecl.model.gpt import MaskableLinear, maskable_layers
from sparsecl.sparse.apply import LayerInfo, draw_layers


@dataclass
class ExpandParams:
    new_blocks: int = 1
    """Blocks inserted at the start of every phase after the first."""
    train: Literal["new", "all"] = "new"
    """'new' trains only the blocks added in the current phase (LLaMA-Pro); 'all' trains every block."""

    def __post_init__(self) -> None:
        if self.new_blocks < 1:
            raise ConfigError("method.params.new_blocks", f"must be >= 1, got {self.new_blocks}")


def insert_positions(n_blocks: int, n_new: int) -> list[int]:
    """Indices (in the grown stack, ascending) the new blocks take: one after each of n_new equal groups."""
    ends = [round((g + 1) * n_blocks / n_new) for g in range(n_new)]  # group ends in the old stack
    return [e + i for i, e in enumerate(ends)]


@torch.no_grad()
def grow(trainer: TrainerView, phase: int, n_new: int) -> list[int]:
    """Insert n_new function-preserving blocks; returns their indices in the grown stack."""
    model, cfg = trainer.model, trainer.cfg
    blocks = model.blocks
    positions = insert_positions(len(blocks), n_new)
    for j, pos in enumerate(positions):
        src = blocks[pos - 1]
        new = copy.deepcopy(src)
        for mod_name, mod in maskable_layers(new).items():
            src_mod = cast(MaskableLinear, src.get_submodule(mod_name))  # the same layer as ``mod``
            src_mask = src_mod.mask
            mask = None if src_mask is None else torch.ones_like(src_mask)
            parts = {f"expand.p{phase}.n{j}.{mod_name}.{part}": (part, rows) for part, rows in mod.part_rows()}
            shapes = {name: (rows.stop - rows.start, mod.in_features) for name, (_, rows) in parts.items()}
            drawn: dict[str, torch.Tensor] = {}
            if src_mask is not None:  # the source layer's realised density, drawn by the run's pipeline
                dens = {name: float(src_mask[rows].sum()) / (shapes[name][0] * shapes[name][1])
                        for name, (_, rows) in parts.items()}
                drawn = {name: m for name, _, m in draw_layers(shapes, dens, cfg.sparse, cfg.seed)}
            for name, (part, rows) in parts.items():
                out_f, in_f = shapes[name]
                nnz = out_f * in_f
                if mask is not None and name in drawn:
                    mask[rows] = drawn[name].to(mask.device)
                    nnz = int(drawn[name].sum())
                if part in cfg.sparse.targets:
                    trainer.layers.append(LayerInfo(name, (out_f, in_f), nnz / (out_f * in_f), nnz))
            w = mod.dense_weight().detach()
            mod.set_weight(torch.zeros_like(w) if mod.residual_out else w, mask)  # both backends: mask and values
            if mod.residual_out and mod.bias is not None:
                mod.bias.zero_()
        blocks.insert(pos, new)
    return positions


class Expand(Method):
    name = "expand"
    Params = ExpandParams
    grows_model = True

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.expansions: list[dict[str, Any]] = []  # {"phase": p, "positions": [...]}, in order
        self.added_params = 0

    def _set_trainable(self, trainer: TrainerView, positions: list[int]) -> None:
        model = trainer.model
        if self.params.train == "new":
            freeze(model.parameters())  # also drops the gradients of the last step, which nothing else would clear
        else:
            for p in model.parameters():
                p.requires_grad_(True)
        for i in positions:
            for p in model.blocks[i].parameters():
                p.requires_grad_(True)

    def _grow(self, trainer: TrainerView, phase: int) -> list[int]:
        before = sum(p.numel() for p in trainer.model.parameters())
        positions = grow(trainer, phase, self.params.new_blocks)
        self.added_params += sum(p.numel() for p in trainer.model.parameters()) - before
        return positions

    def begin_phase(self, trainer: TrainerView, phase: int) -> None:
        if phase < 2 or any(e["phase"] == phase for e in self.expansions):
            return
        positions = self._grow(trainer, phase)
        self.expansions.append({"phase": phase, "positions": positions})
        self._set_trainable(trainer, positions)
        trainer.model_changed()

    def prepare_restore(self, trainer: TrainerView, js: dict[str, Any]) -> None:
        """Re-grow the fresh model exactly as the checkpointed one was grown, before its tensors load."""
        self.expansions, self.added_params = [], 0
        for e in js.get("expansions", []):
            positions = self._grow(trainer, e["phase"])
            self.expansions.append({"phase": e["phase"], "positions": positions})
        if self.expansions:
            self._set_trainable(trainer, self.expansions[-1]["positions"])
        trainer.model_changed()

    def state_json(self) -> dict[str, Any]:
        return {"expansions": self.expansions}

    def summary_info(self) -> dict[str, Any]:
        return {"expansions": self.expansions, "added_params": self.added_params,
                "trained_blocks": self.params.train}

    def memory_bytes(self) -> int:
        """The added parameters (float32) are this method's extra memory."""
        return 4 * self.added_params
