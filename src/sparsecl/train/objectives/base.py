"""The objective interface the trainer's step calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from sparsecl.train.trainer import Trainer


@dataclass
class StepLoss:
    loss: torch.Tensor
    tokens: int
    """Tokens the step trained on (counted into train_tokens)."""
    stats: dict[str, float] = field(default_factory=dict)
    """Per-step numbers worth logging (e.g. GRPO's reward, KL, entropy, completion length)."""
    batch: tuple[torch.Tensor, torch.Tensor] | None = None
    """The token batch (x, y) the loss came from through the method's ``training_loss`` (None in rl phases); the
    trainer hands it to the method's step hooks (A-GEM, SAM and RigL work on it)."""


class Objective:
    """One phase's objective; state it keeps inside a phase is saved with mid-phase checkpoints."""

    name = ""

    def begin_phase(self, trainer: Trainer, phase: int) -> None:
        """Called once when the phase starts (after the method's begin_phase), not on a resume."""

    def step_loss(self, trainer: Trainer, domains: list[str], phase: int, step: int) -> StepLoss:
        raise NotImplementedError

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, trainer: Trainer, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what ``state_tensors`` saved, on a resume in the middle of the phase."""

    def summary(self, log: list[dict[str, Any]]) -> dict[str, float]:
        """Numbers for the summary from this phase's per-step ``stats``."""
        return {}
