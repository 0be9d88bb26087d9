"""Learning without Forgetting (Li & Hoiem 2016), for a language model.

At each phase end the model is frozen into a teacher. In later phases the loss on the *current* inputs is
CE + lambda * T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over positions (the T^2
keeps the gradient scale independent of T, as in Hinton et al. 2015). The teacher is a full copy of the
model (masks included), so its memory equals the model's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from sparsecl.errors import ConfigError
from sparsecl.methods.base import Method
from sparsecl.store.checkpoint import model_tensors

if TYPE_CHECKING:
    from sparsecl.train.trainer import Trainer


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


class LwF(Method):
    name = "lwf"
    Params = LwFParams

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.teacher: torch.nn.Module | None = None
        self._trainer: Trainer | None = None

    def training_loss(self, trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = trainer.model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        if self.teacher is None or self.params.lam == 0:
            return loss
        with torch.no_grad():
            t = self.teacher(x)
        return loss + self.params.lam * distill_loss(logits, t, self.params.temperature)

    def _freeze(self, model: torch.nn.Module) -> torch.nn.Module:
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    def end_phase(self, trainer: Trainer, phase: int) -> None:
        self.teacher = self._freeze(trainer.model)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.teacher is None else {f"teacher.{k}": v for k, v in model_tensors(self.teacher).items()}

    def prepare_restore(self, trainer: Trainer, js: dict[str, Any]) -> None:
        self._trainer = trainer

    def load_state(self, tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> None:
        sd = {k[len("teacher."):]: v for k, v in tensors.items() if k.startswith("teacher.")}
        if not sd or self._trainer is None:
            return
        teacher = self._freeze(self._trainer.model)  # same structure and masks; weights replaced below
        dev = next(teacher.parameters()).device
        teacher.load_state_dict({k: v.to(dev) for k, v in sd.items()}, strict=False)
        self.teacher = teacher
