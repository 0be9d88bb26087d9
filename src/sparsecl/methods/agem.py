"""Averaged GEM (Chaudhry et al. 2019, "Efficient Lifelong Learning with A-GEM").

Each step, after the new batch's gradient g is computed, a reference gradient g_ref is computed on a
sample of buffered sequences from *earlier* phases (other domain sets than the current one). If they
conflict (g . g_ref < 0) the update uses g - (g . g_ref / g_ref . g_ref) g_ref, whose dot product with
g_ref is zero. The buffer is a reservoir over every sequence trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sparsecl.errors import ConfigError
from sparsecl.methods.base import TrainerView
from sparsecl.methods.common import BufferedMethod, keyed, where


@dataclass
class AGEMParams:
    buffer_tokens: int = 65536
    """Buffer size in tokens; it holds buffer_tokens // (block_size + 1) sequences."""
    ref_batch: int = 0
    """Buffered sequences per reference gradient (0 = the training batch size)."""

    def __post_init__(self) -> None:
        if self.buffer_tokens < 1:
            raise ConfigError("method.params.buffer_tokens", f"must be >= 1, got {self.buffer_tokens}")
        if self.ref_batch < 0:
            raise ConfigError("method.params.ref_batch", f"must be >= 0, got {self.ref_batch}")


def project(g: list[torch.Tensor], g_ref: list[torch.Tensor]) -> tuple[list[torch.Tensor], bool]:
    """A-GEM's projection of g against g_ref over all tensors jointly; also whether it projected."""
    dot = sum((a * b).sum() for a, b in zip(g, g_ref, strict=True))
    ref_sq = sum((b * b).sum() for b in g_ref)
    if float(dot) >= 0 or float(ref_sq) == 0:
        return g, False
    c = dot / ref_sq
    return [a - c * b for a, b in zip(g, g_ref, strict=True)], True


class AGEM(BufferedMethod):
    name = "agem"
    Params = AGEMParams

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.steps = 0
        self.projected = 0

    def after_backward(self, trainer: TrainerView, batch: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        assert batch is not None, "refused in rl phases (rl_refused): there is no token batch"
        x, y = batch
        buf = self.ensure_buffer(trainer)
        cur = self.group_id(trainer)
        old = (buf.group[: buf.size] != cur).double() if buf.size else None
        if old is not None and old.sum() > 0:
            phase, step = where(trainer)
            n = self.params.ref_batch or x.shape[0]
            xr, yr = buf.batch(buf.sample_index(n, keyed(trainer, "agem-ref", phase, step), old), x.device)
            params = [p for p in trainer.model.parameters() if p.requires_grad and p.grad is not None]
            g = [p.grad.detach().clone() for p in params if p.grad is not None]  # every p: filtered above
            refs = torch.autograd.grad(trainer.model.loss(xr, yr), params, allow_unused=True)
            g_ref = [torch.zeros_like(p) if r is None else r for p, r in zip(params, refs, strict=True)]
            new, did = project(g, g_ref)
            for p, gn in zip(params, new, strict=True):
                assert p.grad is not None
                p.grad.copy_(gn)
            self.steps += 1
            self.projected += int(did)
        self.store(trainer, x, y)

    def summary_info(self) -> dict[str, Any]:
        return {"reference_steps": self.steps, "projected_steps": self.projected}

    def state_json(self) -> dict[str, Any]:
        return {**super().state_json(), "steps": self.steps, "projected": self.projected}

    def load_state(self, tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> None:
        super().load_state(tensors, js)
        self.steps, self.projected = int(js.get("steps", 0)), int(js.get("projected", 0))
