"""Sharpness-aware minimisation around AdamW (Foret et al. 2021).

After the usual backward, every trained tensor moves by e = rho * g / ||g|| (global L2 norm over all
tensors, computed on the masked gradient, and e itself masked, so no connection outside a mask moves);
the loss and gradient are recomputed on the same batch at theta + e; the weights go back to theta and
AdamW steps with the perturbed-point gradient. Each step therefore costs two forward/backward passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sparsecl.errors import ConfigError
from sparsecl.methods.base import Method, TrainerView
from sparsecl.model.gpt import param_masks


@dataclass
class SAMParams:
    rho: float = 0.05
    """Radius rho of the weight perturbation."""

    def __post_init__(self) -> None:
        if self.rho <= 0:
            raise ConfigError("method.params.rho", f"must be > 0, got {self.rho}")


def perturbation(params: Sequence[torch.Tensor], masks: dict[int, torch.Tensor], rho: float) -> list[torch.Tensor]:
    """e = rho * g / ||g|| with every gradient restricted to its mask; zero if the gradient is zero."""
    gs = []
    for p in params:
        assert p.grad is not None, "perturbation needs the gradients of a backward pass"
        g = p.grad.detach()
        m = masks.get(id(p))
        gs.append(g * m if m is not None else g)
    norm = torch.sqrt(torch.as_tensor(sum((g.float() ** 2).sum() for g in gs)))  # as_tensor: sum([]) is int 0
    if float(norm) == 0:
        return [torch.zeros_like(g) for g in gs]
    return [rho * g / norm for g in gs]


class SAM(Method):
    name = "sam"
    rl_refused = "its sharpness step recomputes the loss of the step's token batch at perturbed weights"
    Params = SAMParams

    def after_backward(self, trainer: TrainerView, batch: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        assert batch is not None, "refused in rl phases (rl_refused): there is no token batch"
        x, y = batch
        model = trainer.model
        params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
        eps = perturbation(params, param_masks(model), self.params.rho)
        saved = [p.detach().clone() for p in params]  # restore exactly, not by subtracting e
        with torch.no_grad():
            for p, e in zip(params, eps, strict=True):
                p.add_(e)
        for p in params:
            p.grad = None
        model.loss(x, y).backward()
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
