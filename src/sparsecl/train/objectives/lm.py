"""Next-token loss on every position of windows drawn from the phase's domains."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparsecl.train.objectives.base import Objective, StepLoss

if TYPE_CHECKING:
    from sparsecl.train.trainer import Trainer


class LM(Objective):
    name = "lm"

    def step_loss(self, trainer: Trainer, domains: list[str], phase: int, step: int) -> StepLoss:
        x, y = trainer.batch(domains, "train", phase, step)
        return StepLoss(trainer.method.training_loss(trainer, x, y), x.numel(), batch=(x, y))
