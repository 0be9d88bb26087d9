"""Sparse updates on a (dense or sparse) network: each step only a fraction of the existing weights moves.

Per trained tensor, k = round(fraction * n) of its n existing entries (on a masked layer: the kept ones) are
selected, either each step by the largest gradient magnitudes ('topk') or once per phase uniformly at random
('random', keyed by (seed, phase, parameter name), so a resume draws the same subset).

A zeroed gradient is not enough under AdamW: momentum and decoupled weight decay still move an entry whose
gradient is zero. So the step itself is made sparse: before it the method records every trained tensor and
its AdamW moments; after it, every entry that was not selected gets its weight AND both moments back
bit-for-bit. A non-selected entry therefore stays exactly unchanged and keeps the moments of its last
selected step (they neither decay nor accumulate while it waits); the shared per-tensor step counter (bias
correction) advances every step. Gradients off the selection are zeroed before clipping, so the clipping norm
is that of the update actually applied. Cost: one copy of every trained tensor and its two moments per step
(transient), plus for 'topk' a sort of each tensor's gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from sparsecl.errors import ConfigError
from sparsecl.methods.base import Batch, Method, TrainerView
from sparsecl.methods.common import keyed, trainable
from sparsecl.model.gpt import param_masks

MOMENTS = ("exp_avg", "exp_avg_sq")


@dataclass
class SparseUpdateParams:
    fraction: float = 0.1
    """Fraction of each trained tensor's existing entries updated per step, in (0, 1]."""
    select: Literal["topk", "random"] = "topk"
    """'topk': the largest |gradient| entries, chosen every step; 'random': a fixed random subset per phase."""

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError("method.params.fraction", f"must be in (0, 1], got {self.fraction}",
                              "it is the fraction of weights updated per step")
        if self.select not in ("topk", "random"):
            raise ConfigError("method.params.select", f"must be 'topk' or 'random', got {self.select!r}")


def n_selected(fraction: float, n: int) -> int:
    """Entries updated per step out of n existing ones."""
    return min(n, round(fraction * n))


def topk_selection(grad: torch.Tensor, exists: torch.Tensor | None, fraction: float) -> torch.Tensor:
    """Bool mask of the round(fraction * n) existing entries with the largest |grad| (ties: lowest index)."""
    score = grad.detach().abs().flatten().double()
    n = score.numel()
    if exists is not None:
        flat = exists.flatten()
        score = torch.where(flat, score, torch.full_like(score, -1.0))
        n = int(flat.sum())
    k = n_selected(fraction, n)
    order = torch.argsort(score, descending=True, stable=True)[:k]
    sel = torch.zeros(score.numel(), dtype=torch.bool, device=grad.device)
    sel[order] = True
    return sel.view(grad.shape)


def random_selection(shape: torch.Size, exists: torch.Tensor | None, fraction: float,
                     gen: torch.Generator) -> torch.Tensor:
    """Bool mask of round(fraction * n) existing entries drawn uniformly without replacement by ``gen``."""
    numel = 1
    for s in shape:
        numel *= s
    candidates = torch.arange(numel) if exists is None else exists.flatten().cpu().nonzero().flatten()
    k = n_selected(fraction, candidates.numel())
    pick = candidates[torch.randperm(candidates.numel(), generator=gen)[:k]]
    sel = torch.zeros(numel, dtype=torch.bool)
    sel[pick] = True
    return sel.view(shape)


class SparseUpdate(Method):
    name = "sparseupdate"
    Params = SparseUpdateParams

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.fixed: dict[str, torch.Tensor] = {}  # 'random': parameter name -> this phase's subset
        self.fixed_phase = 0
        self.selected: dict[int, torch.Tensor] = {}  # id(parameter) -> this step's selection
        self.before: dict[int, list[torch.Tensor | None]] = {}  # id -> [weight, exp_avg, exp_avg_sq] pre-step
        self.counts = {"selected": 0, "existing": 0}

    def _random(self, trainer: TrainerView, phase: int) -> None:
        masks = param_masks(trainer.model)
        self.fixed = {n: random_selection(p.shape, masks.get(id(p)), self.params.fraction,
                                          keyed(trainer, "sparseupdate", phase, n)).to(p.device)
                      for n, p in trainable(trainer.model)}
        self.fixed_phase = phase

    def after_backward(self, trainer: TrainerView, batch: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        phase = trainer.progress.phase + 1
        if self.params.select == "random" and self.fixed_phase != phase:  # a new phase, or a resumed one
            self._random(trainer, phase)
        masks = param_masks(trainer.model)
        opt = trainer.optimizer
        self.selected, self.before = {}, {}
        for n, p in trainable(trainer.model):
            if p.grad is None:  # AdamW skips it: nothing moves
                continue
            exists = masks.get(id(p))
            sel = (self.fixed[n] if self.params.select == "random"
                   else topk_selection(p.grad, exists, self.params.fraction))
            p.grad.mul_(sel)
            st = opt.state.get(p, {}) if opt is not None else {}
            self.selected[id(p)] = sel
            self.before[id(p)] = [p.detach().clone()] + [st[k].clone() if k in st else None for k in MOMENTS]
            self.counts["selected"] += int(sel.sum())
            self.counts["existing"] += p.numel() if exists is None else int(exists.sum())

    @torch.no_grad()
    def after_step(self, trainer: TrainerView, batch: Batch | None) -> None:
        """Put back weight and moments of every entry that was not selected."""
        opt = trainer.optimizer
        for _, p in trainable(trainer.model):
            if id(p) not in self.selected:
                continue
            sel, (w, *moments) = self.selected[id(p)], self.before[id(p)]
            assert w is not None  # the weight is always saved; only moments may be missing (first step)
            p.copy_(torch.where(sel, p, w))
            st = opt.state.get(p, {}) if opt is not None else {}
            for key, old in zip(MOMENTS, moments, strict=True):
                if key in st:
                    st[key].copy_(torch.where(sel, st[key], torch.zeros_like(st[key]) if old is None else old))
        self.selected, self.before = {}, {}

    def state_json(self) -> dict[str, Any]:
        return {"counts": dict(self.counts)}

    def load_state(self, tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> None:
        self.counts = dict(js.get("counts", self.counts))

    def summary_info(self) -> dict[str, Any]:
        c = self.counts
        return {"select": self.params.select, "fraction": self.params.fraction,
                "realised_fraction": round(c["selected"] / c["existing"], 6) if c["existing"] else None}

    def memory_bytes(self) -> int:
        """The fixed subsets (one byte per entry) of 'random'; 'topk' keeps nothing between steps."""
        return sum(t.numel() for t in self.fixed.values())
