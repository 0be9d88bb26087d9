"""Synaptic intelligence (Zenke, Poole & Ganguli 2017).

During a phase every step adds the path integral omega_i += -g_i * delta_theta_i, where g is the gradient
of the task loss (the penalty's own gradient 2 c Omega (theta - theta*) is subtracted from the total) and
delta_theta the optimizer's actual update. At the phase end the importance grows by
omega_i / ((theta_i(end) - theta_i(start))^2 + xi), clamped at 0 (with Adam and noisy gradients a few path
integrals come out negative, and a negative importance would reward moving away), omega resets, and the
anchor theta* becomes the current weights. Training adds c * sum_i Omega_i (theta_i - theta*_i)^2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sparsecl.errors import ConfigError
from sparsecl.methods.base import Batch, Method, TrainerView
from sparsecl.methods.common import trainable
from sparsecl.methods.ewc import quadratic_penalty
from sparsecl.store.checkpoint import split_prefix


@dataclass
class SIParams:
    c: float = 1.0
    """Penalty strength c in c * sum Omega (theta - theta*)^2."""
    xi: float = 1e-3
    """Damping xi in the importance denominator (delta theta)^2 + xi."""

    def __post_init__(self) -> None:
        if self.c < 0:
            raise ConfigError("method.params.c", f"must be >= 0, got {self.c}")
        if self.xi <= 0:
            raise ConfigError("method.params.xi", f"must be > 0, got {self.xi}", "use a small positive value")


class SI(Method):
    name = "si"
    Params = SIParams

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.omega: dict[str, torch.Tensor] = {}  # running path integral of this phase
        self.importance: dict[str, torch.Tensor] = {}  # Omega, summed over finished phases
        self.anchor: dict[str, torch.Tensor] = {}  # theta* (end of the previous phase)
        self.start: dict[str, torch.Tensor] = {}  # theta at the start of this phase
        self._grad: dict[str, torch.Tensor] = {}
        self._before: dict[str, torch.Tensor] = {}

    def begin_phase(self, trainer: TrainerView, phase: int) -> None:
        params = trainable(trainer.model)
        self.start = {n: p.detach().clone() for n, p in params}
        self.omega = {n: torch.zeros_like(p) for n, p in params}

    def _penalty_terms(self, model: torch.nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
        dev = next(model.parameters()).device
        return [(n, p, self.importance[n].to(dev), self.anchor[n].to(dev))
                for n, p in trainable(model) if n in self.importance]

    def training_loss(self, trainer: TrainerView, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = trainer.model.loss(x, y)
        terms = self._penalty_terms(trainer.model)
        if not terms:
            return loss
        return loss + self.params.c * quadratic_penalty([(p, w, a) for _, p, w, a in terms])

    def add_penalty(self, trainer: TrainerView, loss: torch.Tensor) -> torch.Tensor:
        terms = self._penalty_terms(trainer.model)
        return loss + self.params.c * quadratic_penalty([(p, w, a) for _, p, w, a in terms]) if terms else loss

    def after_backward(self, trainer: TrainerView, batch: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        terms = {n: (w, a) for n, _, w, a in self._penalty_terms(trainer.model)}
        self._grad, self._before = {}, {}
        for n, p in trainable(trainer.model):
            if p.grad is None:
                continue
            g = p.grad.detach().clone()
            if n in terms:  # remove the penalty's gradient: the path integral is over the task loss
                w, a = terms[n]
                g -= 2 * self.params.c * w * (p.detach() - a)
            self._grad[n] = g
            self._before[n] = p.detach().clone()

    def after_step(self, trainer: TrainerView, batch: Batch | None) -> None:
        for n, p in trainable(trainer.model):
            if n in self._grad:
                om = self.omega[n]
                self.omega[n] = om.to(p.device) - self._grad[n] * (p.detach() - self._before[n])
        self._grad, self._before = {}, {}

    def end_phase(self, trainer: TrainerView, phase: int) -> None:
        for n, p in trainable(trainer.model):
            delta = p.detach() - self.start[n].to(p.device)
            add = (self.omega[n].to(p.device) / (delta ** 2 + self.params.xi)).clamp(min=0)
            self.importance[n] = self.importance[n].to(p.device) + add if n in self.importance else add
            self.anchor[n] = p.detach().clone()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for prefix, d in (("omega", self.omega), ("importance", self.importance), ("anchor", self.anchor),
                          ("start", self.start)):
            out.update({f"{prefix}.{k}": v for k, v in d.items()})
        return out

    def load_state(self, tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> None:
        for prefix in ("omega", "importance", "anchor", "start"):
            setattr(self, prefix, split_prefix(tensors, prefix + "."))

    def memory_bytes(self) -> int:
        """Importance and anchor, plus the running omega and the phase-start weights: 4 copies of the weights."""
        return sum(t.numel() * t.element_size() for t in self.state_tensors().values())
