"""Small helpers the methods share: parameter views, masks, keyed generators, a buffer-backed base class.

Methods operate on ``model.named_parameters()`` generically (whatever tensors a backend trains), never on
weight shapes; masks are looked up by parameter identity where a module carries one.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from sparsecl.errors import ConfigError
from sparsecl.methods.base import Method, TrainerView
from sparsecl.methods.buffer import ReservoirBuffer
from sparsecl.model.gpt import trainable as trainable  # the methods import it from here
from sparsecl.rng import keyed_generator
from sparsecl.store.checkpoint import model_tensors, split_prefix

if TYPE_CHECKING:
    from sparsecl.config import RunConfig
    from sparsecl.model.gpt import GPT


def freeze(params: Iterable[torch.nn.Parameter]) -> None:
    """Stop training ``params`` and drop their gradients: the optimizer no longer holds them, so nothing would
    clear a stale ``.grad``, and the trainer's grad-norm clipping (over every parameter) would still count it."""
    for p in params:
        p.requires_grad_(False)
        p.grad = None


def where(trainer: TrainerView) -> tuple[int, int]:
    """(phase, step within the phase) of the step being taken: the key of every random draw in it."""
    return trainer.progress.phase + 1, trainer.progress.phase_step


def keyed(trainer: TrainerView, *key: object) -> torch.Generator:
    return keyed_generator(trainer.cfg.seed, *key)


def n_replay(ratio: float, batch: int) -> int:
    """Rows of a batch of ``batch`` that come from replay (at least one new row is always kept)."""
    return min(batch - 1, round(ratio * batch))


def check_ratio(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"method.params.{name}", f"must be in [0, 1), got {value}",
                          "it is the fraction of each batch drawn from replay")


class BufferedMethod(Method):
    """A method with a reservoir buffer of training sequences, grouped by the phase's domain set.

    Subclasses' ``Params`` have a ``buffer_tokens`` field; the buffer holds buffer_tokens // (block_size + 1)
    sequences of block_size + 1 tokens (inputs plus the last target).
    """

    rl_refused = "its buffer stores the token windows of each step's batch and replays them into it"

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.buffer: ReservoirBuffer | None = None
        self.groups: list[str] = []

    def validate_run(self, cfg: RunConfig) -> None:
        tokens, seq_len = self.params.buffer_tokens, cfg.model.block_size + 1
        if tokens < seq_len:
            raise ConfigError("method.params.buffer_tokens", f"{tokens} tokens hold no sequence of "
                              f"block_size + 1 = {seq_len} tokens", f"set it >= {seq_len}")

    def ensure_buffer(self, trainer: TrainerView) -> ReservoirBuffer:
        if self.buffer is None:
            seq_len = trainer.cfg.model.block_size + 1
            cap = self.params.buffer_tokens // seq_len
            if cap < 1:
                raise ConfigError("method.params.buffer_tokens", f"{self.params.buffer_tokens} tokens hold no "
                                  f"sequence of block_size + 1 = {seq_len} tokens", f"set it >= {seq_len}")
            self.buffer = ReservoirBuffer(cap, seq_len, trainer.cfg.model.vocab_size)
        return self.buffer

    def group_id(self, trainer: TrainerView) -> int:
        name = "+".join(trainer.current_domains)
        if name not in self.groups:
            self.groups.append(name)
        return self.groups.index(name)

    def store(self, trainer: TrainerView, x: torch.Tensor, y: torch.Tensor,
              extra: dict[str, torch.Tensor] | None = None) -> None:
        """Offer the rows just trained on to the reservoir (after any replay draw of this step)."""
        phase, step = where(trainer)
        seqs = torch.cat([x, y[:, -1:]], dim=1)
        self.ensure_buffer(trainer).add(seqs, self.group_id(trainer), keyed(trainer, "reservoir", phase, step),
                                        extra)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.buffer is None else {f"buffer.{k}": v for k, v in self.buffer.state_tensors().items()}

    def state_json(self) -> dict[str, Any]:
        return {"groups": self.groups, "buffer": None if self.buffer is None else self.buffer.state_json()}

    def load_state(self, tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> None:
        self.groups = list(js.get("groups", []))
        b = js.get("buffer")
        if b is not None:
            self.buffer = ReservoirBuffer(b["capacity"], b["seq_len"], 2)
            self.buffer.load_state(split_prefix(tensors, "buffer."), b)

    def memory_bytes(self) -> int:
        return 0 if self.buffer is None else self.buffer.memory_bytes()


class TeacherMethod(Method):
    """A method that keeps a frozen copy of the model as it was at the last phase end (LwF, align).

    The copy includes masks and backend, so its memory equals the model's; it is checkpointed under
    'teacher.' and rebuilt on resume from the fresh model's structure with the saved weights.
    """

    rl_refused = "it distils its teacher on each step's token batch"

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.teacher: GPT | None = None
        self._trainer: TrainerView | None = None

    def _freeze(self, model: GPT) -> GPT:
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    def end_phase(self, trainer: TrainerView, phase: int) -> None:
        self.teacher = self._freeze(trainer.model)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.teacher is None else {f"teacher.{k}": v for k, v in model_tensors(self.teacher).items()}

    def prepare_restore(self, trainer: TrainerView, js: dict[str, Any]) -> None:
        self._trainer = trainer

    def load_state(self, tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> None:
        sd = split_prefix(tensors, "teacher.")
        if not sd or self._trainer is None:
            return
        teacher = self._freeze(self._trainer.model)  # same structure and masks; weights replaced below
        dev = next(teacher.parameters()).device
        teacher.load_state_dict({k: v.to(dev) for k, v in sd.items()}, strict=False)
        self.teacher = teacher
