"""Learning without Forgetting (Li & Hoiem 2016), for a language model.

At each phase end the model is frozen into a teacher. In later phases the loss on the *current* inputs is
CE + lambda * T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over positions (the T^2
keeps the gradient scale independent of T, as in Hinton et al. 2015). The teacher is a full copy of the
model (masks included), so its memory equals the model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparsecl.errors import ConfigError
from sparsecl.methods.base import TrainerView
from sparsecl.methods.common import TeacherMethod
from sparsecl.model.gpt import lm_loss


@dataclass
class LwFParams:
    lam: float = 1.0
    """Weight lambda of the distillation term."""
    temperature: float = 2.0
    """Softmax temperature T of teacher and student in the distillation term."""

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ConfigError("method.params.lam", f"must be >= 0, got {self.lam}")
        if self.temperature <= 0:
            raise ConfigError("method.params.temperature", f"must be > 0, got {self.temperature}")


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean over positions of KL(teacher_T || student_T) for logits (..., V)."""
    s = F.log_softmax(student.float().reshape(-1, student.size(-1)) / temperature, dim=-1)
    t = F.log_softmax(teacher.float().reshape(-1, teacher.size(-1)) / temperature, dim=-1)
    return temperature ** 2 * F.kl_div(s, t, log_target=True, reduction="batchmean")


class LwF(TeacherMethod):
    name = "lwf"
    Params = LwFParams

    def training_loss(self, trainer: TrainerView, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = trainer.model(x)
        loss = lm_loss(logits, y)
        if self.teacher is None or self.params.lam == 0:
            return loss
        with torch.no_grad():
            t = self.teacher(x)
        return loss + self.params.lam * distill_loss(logits, t, self.params.temperature)
