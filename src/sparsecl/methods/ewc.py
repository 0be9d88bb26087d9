"""Online EWC (Kirkpatrick et al. 2017; online form of Schwarz et al. 2018, Progress & Compress).

At the end of every phase the diagonal Fisher F_t is estimated on that phase's data and folded into
F <- gamma * F + F_t; the anchor theta* becomes the current weights. Training adds
(lambda / 2) * sum_i F_i (theta_i - theta*_i)^2.

The Fisher is the mean of squared *per-sequence* gradients of the sequence's mean token loss (squaring a
minibatch-mean gradient instead underestimates it 6-16x). Labels are either the data's next tokens
('empirical') or drawn from the model's own predictive distribution ('sampled', the true Fisher); the
summary records which. Per-sequence gradients come from a loop over sequences, which works for every
backend (a custom autograd function need not support vmap).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from sparsecl.errors import ConfigError
from sparsecl.methods.base import Method
from sparsecl.methods.common import keyed, trainable

if TYPE_CHECKING:
    from sparsecl.train.trainer import Trainer


@dataclass
class EWCParams:
    lam: float = 1000.0
    """Penalty strength lambda in (lambda / 2) * sum F (theta - theta*)^2."""
    gamma: float = 1.0
    """Online decay of the old Fisher at each phase end: F <- gamma * F + F_new (1 = plain sum)."""
    fisher_samples: int = 64
    """Sequences whose per-sequence gradients estimate the Fisher at each phase end."""
    labels: Literal["empirical", "sampled"] = "empirical"
    """'empirical' uses the data's next tokens; 'sampled' draws labels from the model (true Fisher)."""

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ConfigError("method.params.lam", f"must be >= 0, got {self.lam}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError("method.params.gamma", f"must be in [0, 1], got {self.gamma}")
        if self.fisher_samples < 1:
            raise ConfigError("method.params.fisher_samples", f"must be >= 1, got {self.fisher_samples}")


def per_sequence_fisher(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                        params: list[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    """Mean over rows of x of the squared gradient of that row's mean token loss, per parameter."""
    out = {n: torch.zeros_like(p) for n, p in params}
    tensors = [p for _, p in params]
    for i in range(x.shape[0]):
        logits = model(x[i:i + 1])
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y[i:i + 1].reshape(-1))
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        for (n, _), g in zip(params, grads, strict=True):
            if g is not None:
                out[n] += g.detach() ** 2
    return {n: f / x.shape[0] for n, f in out.items()}


def sample_labels(model: torch.nn.Module, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Next tokens drawn from the model's predictive distribution at every position."""
    with torch.no_grad():
        probs = torch.softmax(model(x).float(), dim=-1).cpu()  # (B, T, V)
    flat = torch.multinomial(probs.view(-1, probs.size(-1)), 1, generator=gen)
    return flat.view(x.shape).to(x.device)


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

    def add_penalty(self, trainer: Trainer, loss: torch.Tensor) -> torch.Tensor:
        pen = self.penalty(trainer.model)
        return loss if pen is None else loss + pen

    def training_loss(self, trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = trainer.model.loss(x, y)
        pen = self.penalty(trainer.model)
        return loss if pen is None else loss + pen

    def end_phase(self, trainer: Trainer, phase: int) -> None:
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
                y = sample_labels(model, x, keyed(trainer, "fisher-labels", phase, chunk))
            for k, v in per_sequence_fisher(model, x, y, params).items():
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
        self.fisher = {k[len("fisher."):]: v for k, v in tensors.items() if k.startswith("fisher.")}
        self.anchor = {k[len("anchor."):]: v for k, v in tensors.items() if k.startswith("anchor.")}
        self._pairs = None
