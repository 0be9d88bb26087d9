"""Representation alignment to the previous phase's model, on the current batch.

At each phase end the model is frozen (the same teacher as LwF, ``TeacherMethod``). In later phases the loss
is CE + lam * sum_l w_l * mean((h_l - h'_l)^2), where h_l is the residual stream after block l (l = 1..L)
of the model being trained and h'_l the frozen model's, on the same inputs, and the mean runs over batch,
positions and channels. It asks old features to stay where they were rather than old outputs (LwF), so it
also constrains layers whose change the output would not show. One forward gives both the hidden states and
the logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparsecl.config import RunConfig
from sparsecl.errors import ConfigError
from sparsecl.methods.base import TrainerView
from sparsecl.methods.common import TeacherMethod
from sparsecl.model.gpt import lm_loss


@dataclass
class AlignParams:
    lam: float = 1.0
    """Weight of the alignment term."""
    layers: float | list[float] = 1.0
    """Weight w_l of each block's residual stream: one number for every block, or a list of n_layer numbers."""

    def __post_init__(self) -> None:
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or self.lam < 0:
            raise ConfigError("method.params.lam", f"must be a number >= 0, got {self.lam!r}")
        ws = self.layers if isinstance(self.layers, list) else [self.layers]
        if not ws or any(isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 for w in ws):
            raise ConfigError("method.params.layers", f"must be a number >= 0 or a non-empty list of them, got "
                              f"{self.layers!r}")

    def weights(self, n_layer: int) -> list[float]:
        """w_1..w_L for a model of n_layer blocks."""
        if isinstance(self.layers, list):
            if len(self.layers) != n_layer:
                raise ConfigError("method.params.layers", f"has {len(self.layers)} weights for {n_layer} blocks",
                                  f"give one number, or a list of {n_layer}")
            return [float(w) for w in self.layers]
        return [float(self.layers)] * n_layer


def align_penalty(hidden: list[torch.Tensor], previous: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """sum_l w_l * mean((h_l - h'_l)^2) over matching lists of (B, T, C) hidden states."""
    terms = [w * F.mse_loss(h.float(), p.float()) for h, p, w in zip(hidden, previous, weights, strict=True)]
    return torch.stack(terms).sum()


class Align(TeacherMethod):
    name = "align"
    Params = AlignParams

    def validate_run(self, cfg: RunConfig) -> None:
        self.params.weights(cfg.model.n_layer)

    def training_loss(self, trainer: TrainerView, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model = trainer.model
        hidden = model.hidden_states(x)  # embedding, then after every block
        logits = model.lm_head(model.ln_f(hidden[-1]))
        loss = lm_loss(logits, y)
        if self.teacher is None or self.params.lam == 0:
            return loss
        with torch.no_grad():
            previous = self.teacher.hidden_states(x)
        weights = self.params.weights(len(model.blocks))
        return loss + self.params.lam * align_penalty(hidden[1:], previous[1:], weights)
