"""Online EWC (Kirkpatrick et al. 2017; online form of Schwarz et al. 2018, Progress & Compress).

At the end of every phase the diagonal Fisher F_t is estimated on that phase's data and folded into
F <- gamma * F + F_t; the anchor theta* becomes the current weights. Training adds
(lambda / 2) * sum_i F_i (theta_i - theta*_i)^2.

The Fisher is the mean of squared *per-sequence* gradients of the sequence's mean token loss, with the data's
labels ('empirical') or labels drawn from the model ('sampled', the true Fisher); the summary records which.
It is computed by ``sparsecl.model.fisher``, the same code as the ``fisher`` probe's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sparsecl.config import FisherLabels
from sparsecl.errors import ConfigError
from sparsecl.methods.base import Method, TrainerView
from sparsecl.methods.common import keyed, trainable
from sparsecl.model.fisher import per_sequence_fisher
from sparsecl.store.checkpoint import split_prefix


@dataclass
class EWCParams:
    lam: float = 1000.0
    """Penalty strength lambda in (lambda / 2) * sum F (theta - theta*)^2."""
    gamma: float = 1.0
    """Online decay of the old Fisher at each phase end: F <- gamma * F + F_new (1 = plain sum)."""
    fisher_samples: int = 64
    """Sequences whose per-sequence gradients estimate the Fisher at each phase end."""
    labels: FisherLabels = "empirical"
    """'empirical' uses the data's next tokens; 'sampled' draws labels from the model (true Fisher)."""

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ConfigError("method.params.lam", f"must be >= 0, got {self.lam}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError("method.params.gamma", f"must be in [0, 1], got {self.gamma}")
        if self.fisher_samples < 1:
            raise ConfigError("method.params.fisher_samples", f"must be >= 1, got {self.fisher_samples}")


def quadratic_penalty(pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """sum_i w_i (theta_i - anchor_i)^2 over (theta, weight, anchor) triples."""
    total = torch.zeros((), device=pairs[0][0].device)
    for p, w, a in pairs:
        total = total + (w * (p - a) ** 2).sum()
    return total


class EWC(Method):
    name = "ewc"
    Params = EWCParams

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self._pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    def penalty(self, model: torch.nn.Module) -> torch.Tensor | None:
        if not self.fisher:
            return None
        if self._pairs is None:
            dev = next(model.parameters()).device
            self._pairs = [(p, self.fisher[n].to(dev), self.anchor[n].to(dev))
                           for n, p in trainable(model) if n in self.fisher]
        return 0.5 * self.params.lam * quadratic_penalty(self._pairs)

    def add_penalty(self, trainer: TrainerView, loss: torch.Tensor) -> torch.Tensor:
        pen = self.penalty(trainer.model)
        return loss if pen is None else loss + pen

    def training_loss(self, trainer: TrainerView, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = trainer.model.loss(x, y)
        pen = self.penalty(trainer.model)
        return loss if pen is None else loss + pen

    def end_phase(self, trainer: TrainerView, phase: int) -> None:
        model = trainer.model
        params = trainable(model)
        was = model.training
        model.eval()
        left, chunk = self.params.fisher_samples, 0
        total: dict[str, torch.Tensor] = {}
        while left > 0:
            x, y = trainer.batch(trainer.current_domains, "fisher", phase, chunk)
            x, y = x[:left], y[:left]
            if self.params.labels == "sampled":
                fisher = per_sequence_fisher(model, x, None, params, keyed(trainer, "fisher-labels", phase, chunk))
            else:
                fisher = per_sequence_fisher(model, x, y, params)
            for k, v in fisher.items():
                total[k] = total[k] + v * x.shape[0] if k in total else v * x.shape[0]
            left -= x.shape[0]
            chunk += 1
        model.train(was)
        new = {k: v / self.params.fisher_samples for k, v in total.items()}
        self.fisher = {k: self.params.gamma * self.fisher[k] + v if k in self.fisher else v for k, v in new.items()}
        self.anchor = {k: p.detach().clone() for k, p in params}
        self._pairs = None

    def summary_info(self) -> dict[str, Any]:
        return {"fisher_labels": self.params.labels, "fisher_samples": self.params.fisher_samples,
                "fisher_estimator": "mean of squared per-sequence gradients (sequence mean token loss)"}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"fisher.{k}": v for k, v in self.fisher.items()}
        out.update({f"anchor.{k}": v for k, v in self.anchor.items()})
        return out

    def load_state(self, tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> None:
        self.fisher = split_prefix(tensors, "fisher.")
        self.anchor = split_prefix(tensors, "anchor.")
        self._pairs = None
