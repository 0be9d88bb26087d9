"""The method interface: one small class per continual-learning method, with a few hooks.

The trainer calls, in order: ``phase_domains`` and ``begin_phase`` when a phase starts; per step
``training_loss`` then backward, ``after_backward`` (e.g. project or perturb gradients) and, after the
optimizer step, ``after_step``; ``end_phase`` once the phase's final evaluation is done. A method keeps
whatever it needs across phases and returns it from ``state_tensors``/``state_json`` for checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from sparsecl.train.trainer import Trainer


@dataclass
class NoParams:
    """This method has no hyperparameters."""


class Method:
    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    rl_refused: ClassVar[str] = ""
    """Why the method cannot run an rl phase ('' = it can). A GRPO step builds no LM token batch, so a method
    whose training_loss or after_backward works on that batch (a buffer mixes into it, a teacher distils on it, a
    second pass recomputes its loss) is refused when the config is built, before anything is written."""

    def __init__(self, params: Any) -> None:
        self.params = params

    @classmethod
    def validate_params(cls, raw: dict[str, Any]) -> Any:
        from sparsecl.config import build_dataclass

        return build_dataclass(cls.Params, raw, "method.params")

    @classmethod
    def validate_run(cls, cfg: Any) -> None:
        """Checks that need the whole RunConfig (e.g. a buffer against block_size); raise ConfigError."""

    def phase_domains(self, phase: int, domains: list[str], all_domains: list[str]) -> list[str]:
        """Domains sampled during ``phase`` (1-based); most methods train on the scheduled ones."""
        return domains

    def counts_as_trained(self, phase: int, domains: list[str], all_domains: list[str]) -> list[str]:
        """Domains that count as trained in ``phase`` for t(i); by default the ones actually sampled."""
        return self.phase_domains(phase, domains, all_domains)

    def begin_phase(self, trainer: Trainer, phase: int) -> None:
        pass

    def training_loss(self, trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return trainer.model.loss(x, y)

    def add_penalty(self, trainer: Trainer, loss: torch.Tensor) -> torch.Tensor:
        """An rl phase's step loss: GRPO's loss plus the method's parameter penalty (EWC, SI, O-LoRA), as
        training_loss adds it to the token loss. after_backward and after_step then run as in other phases."""
        return loss

    def after_backward(self, trainer: Trainer) -> None:
        pass

    def after_step(self, trainer: Trainer) -> None:
        pass

    def end_phase(self, trainer: Trainer, phase: int) -> None:
        pass

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def state_json(self) -> dict[str, Any]:
        return {}

    def prepare_restore(self, trainer: Trainer, js: dict[str, Any]) -> None:
        """Before a checkpoint's tensors load: reshape the model if the method changed it."""

    def load_state(self, tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> None:
        pass

    def plain_checkpoints(self) -> bool:
        """Whether a phase checkpoint's model tensors, loaded into the model the config builds, give the trained
        function (post-hoc probes need that); false where a method adds modules that change it."""
        return True

    def summary_info(self) -> dict[str, Any]:
        """Facts about the run the summary should record (e.g. which Fisher was used)."""
        return {}

    def topology_info(self) -> dict[str, Any]:
        """Facts about mask changes the method made (e.g. RigL's churn), recorded in topology.json."""
        return {}

    def memory_bytes(self) -> int:
        """Extra memory the method keeps (buffers, anchors, teachers), for the summary."""
        return sum(t.numel() * t.element_size() for t in self.state_tensors().values())
