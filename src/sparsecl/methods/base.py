"""The method interface: one small class per continual-learning method, with a few hooks.

The trainer calls, in order: ``phase_domains`` and ``begin_phase`` when a phase starts; per step
``training_loss`` then backward, ``after_backward`` (e.g. project or perturb gradients) and, after the
optimizer step, ``after_step``; ``end_phase`` once the phase's final evaluation is done. The step hooks receive
the step's token batch (the one ``training_loss`` got), so no method has to stash it between hooks.

Precision: ``training_loss``, ``after_backward`` and ``after_step`` run under the trainer's autocast (bfloat16
when dtype=bfloat16), so a method's extra forward passes train in the same precision as the main one; a hook
that needs float32 arithmetic on top (e.g. an outer product of activations) disables autocast for it. The phase
hooks run in float32, like evaluation: what they compute is measured (EWC's Fisher, similarities) or sampled.

A method keeps whatever it needs across phases and returns it from ``state_tensors``/``state_json`` for
checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

if TYPE_CHECKING:
    from sparsecl.config import RunConfig
    from sparsecl.model.gpt import GPT
    from sparsecl.sparse.apply import LayerInfo

Batch = tuple[torch.Tensor, torch.Tensor]
"""A token batch: inputs (B, T) and next-token targets (B, T)."""


class StepPosition(Protocol):
    """Where the run stands: ``phase`` phases are complete, plus ``phase_step`` steps of the next one."""

    @property
    def phase(self) -> int: ...

    @property
    def phase_step(self) -> int: ...


class TrainerView(Protocol):
    """What a method may use of the trainer that runs it, and nothing more: methods are written against this, so
    a test can drive them with a stand-in and the trainer can change behind it."""

    @property
    def cfg(self) -> RunConfig: ...

    @property
    def model(self) -> GPT: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def progress(self) -> StepPosition: ...

    @property
    def optimizer(self) -> torch.optim.Optimizer | None: ...

    @property
    def current_domains(self) -> list[str]:
        """The domains the current phase samples (after ``phase_domains``)."""
        ...

    @property
    def layers(self) -> list[LayerInfo]:
        """The run's masked layers; a method that adds layers (expand) appends its own."""
        ...

    def batch(self, domains: list[str], *key: object) -> Batch:
        """A training batch from the mixture of ``domains``, keyed so that a resume draws the same one."""
        ...

    def model_changed(self) -> None:
        """Call after adding or replacing parameters or masks (rebuilds the optimizer, rewrites topology.json)."""
        ...

    def masks_changed(self) -> None:
        """Call after moving connections in place with the optimizer state already remapped."""
        ...


@dataclass
class NoParams:
    """This method has no hyperparameters."""


class Method:
    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    """The typed hyperparameters: a dataclass whose __post_init__ rejects bad values with a ConfigError."""
    grows_model: ClassVar[bool] = False
    """Whether the method adds layers to the model as phases go by (so phase checkpoints differ in architecture
    and the model the config builds cannot load them, e.g. for post-hoc probes)."""
    rl_refused: ClassVar[str] = ""
    """Why the method cannot run an rl phase ('' = it can). A GRPO step builds no LM token batch, so a method
    whose training_loss or after_backward works on that batch (a buffer mixes into it, a teacher distils on it, a
    second pass recomputes its loss) is refused when the config is built, before anything is written."""

    def __init__(self, params: Any) -> None:
        """``params`` is an instance of ``Params``; ``sparsecl.methods.build_method`` parses it from the config."""
        self.params = params

    def validate_run(self, cfg: RunConfig) -> None:
        """Checks of the params against the whole RunConfig (e.g. a buffer against block_size); raise ConfigError."""

    def phase_domains(self, phase: int, domains: list[str], all_domains: list[str]) -> list[str]:
        """Domains sampled during ``phase`` (1-based); most methods train on the scheduled ones."""
        return domains

    def counts_as_trained(self, phase: int, domains: list[str], all_domains: list[str]) -> list[str]:
        """Domains that count as trained in ``phase`` for t(i); by default the ones actually sampled."""
        return self.phase_domains(phase, domains, all_domains)

    def begin_phase(self, trainer: TrainerView, phase: int) -> None:
        pass

    def training_loss(self, trainer: TrainerView, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return trainer.model.loss(x, y)

    def add_penalty(self, trainer: TrainerView, loss: torch.Tensor) -> torch.Tensor:
        """An rl phase's step loss: GRPO's loss plus the method's parameter penalty (EWC, SI, O-LoRA), as
        training_loss adds it to the token loss. after_backward and after_step then run as in other phases."""
        return loss

    def after_backward(self, trainer: TrainerView, batch: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        """After backward on the step's loss, under the trainer's autocast; ``batch`` is the token batch
        ``training_loss`` got, None in rl phases (methods that need it set ``rl_refused``)."""

    def after_step(self, trainer: TrainerView, batch: Batch | None) -> None:
        """After the optimizer step; ``batch`` is the step's (x, y), None where the objective trained on no token
        batch (rl phases)."""

    def end_phase(self, trainer: TrainerView, phase: int) -> None:
        pass

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def state_json(self) -> dict[str, Any]:
        return {}

    def prepare_restore(self, trainer: TrainerView, js: dict[str, Any]) -> None:
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
