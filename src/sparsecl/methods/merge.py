"""Merging phase models at phase ends: a running average (model soup) or task arithmetic.

Let M_{p-1} be the model phase p starts from and θ_p the weights its training reaches. Phase 1 trains the
base, M_1 = θ_1 (a random init is no model to merge toward). At the end of every phase p >= 2 the weights
become M_p = M_{p-1} + c_p (θ_p - M_{p-1}), with τ_p = θ_p - M_{p-1} the phase's task vector:
  average           c_p = 1 / p: M_p is the uniform average of the phase-end weights θ_1 .. θ_p, each
                    phase trained from the average so far (a running model soup, Wortsman et al. 2022);
  task_arithmetic   c_p = scale: M_p = θ_1 + scale * sum_{q=2..p} τ_q (Ilharco et al. 2023, "Editing
                    models with task arithmetic", with θ_1 as the pre-trained model and the task vectors
                    taken sequentially, each from the merged model its phase started from).
Every trained tensor is merged (embeddings, norms, biases, weights; a csr layer's kept values). On a sparse
model every phase model is 0 off the mask, so the merge is too; it is multiplied by the mask once more so the
invariant does not rest on float arithmetic. The mask never changes.

AdamW state after a merge: the moments describe the trajectory to θ_p, which the merge has moved away from,
so they are reset (exp_avg, exp_avg_sq and step zeroed in place, which is what a fresh AdamW starts from). The
reset is in place so the phase checkpoint still holds a complete, resumable optimizer state. With the
default train.reset_optimizer=true the next phase rebuilds the optimizer anyway.

M_{p-1} is kept as method state while phase p trains: one copy of the trained parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from sparsecl.errors import ConfigError
from sparsecl.methods.base import Method, TrainerView
from sparsecl.methods.common import trainable
from sparsecl.model.gpt import param_masks
from sparsecl.store.checkpoint import split_prefix


@dataclass
class MergeParams:
    mode: Literal["average", "task_arithmetic"] = "average"
    """'average': running uniform average of the phase-end weights; 'task_arithmetic': M_{p-1} + scale * τ_p."""
    scale: float = 0.5
    """Task-arithmetic coefficient lambda applied to each phase's task vector (mode=task_arithmetic only)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.scale <= 1.0:
            raise ConfigError("method.params.scale", f"must be in (0, 1], got {self.scale}",
                              "it scales each phase's task vector; 1 keeps the phase model (naive)")


def merge_coefficient(params: MergeParams, phase: int) -> float:
    """c_p of M_p = M_{p-1} + c_p (θ_p - M_{p-1})."""
    return 1.0 / phase if params.mode == "average" else params.scale


class Merge(Method):
    name = "merge"
    Params = MergeParams

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.start: dict[str, torch.Tensor] = {}  # M_{p-1}: the weights phase p started from (p >= 2)
        self.merges: list[dict[str, Any]] = []
        self.copy_bytes = 0  # size of M_{p-1}, held while a phase >= 2 trains

    def begin_phase(self, trainer: TrainerView, phase: int) -> None:
        if phase >= 2:
            self.start = {n: p.detach().clone() for n, p in trainable(trainer.model)}
            self.copy_bytes = sum(t.numel() * t.element_size() for t in self.start.values())

    @torch.no_grad()
    def end_phase(self, trainer: TrainerView, phase: int) -> None:
        if phase < 2 or not self.start:
            return
        c = merge_coefficient(self.params, phase)
        masks = param_masks(trainer.model)
        moved = 0.0
        for n, p in trainable(trainer.model):
            start = self.start[n].to(p.device)
            merged = start + c * (p - start)
            moved += float(((merged - p) ** 2).sum())
            mask = masks.get(id(p))
            p.copy_(merged if mask is None else merged * mask)
        if trainer.optimizer is not None:
            for st in trainer.optimizer.state.values():
                for v in st.values():
                    if torch.is_tensor(v):
                        v.zero_()
        self.merges.append({"phase": phase, "coefficient": c, "distance_moved": moved ** 0.5})
        self.start = {}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"start.{k}": v for k, v in self.start.items()}

    def state_json(self) -> dict[str, Any]:
        return {"merges": self.merges, "copy_bytes": self.copy_bytes}

    def load_state(self, tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> None:
        self.start = split_prefix(tensors, "start.")
        self.merges = list(js.get("merges", []))
        self.copy_bytes = int(js.get("copy_bytes", 0))

    def memory_bytes(self) -> int:
        """The copy of M_{p-1} held during every phase after the first."""
        return self.copy_bytes

    def summary_info(self) -> dict[str, Any]:
        return {"mode": self.params.mode, "scale": self.params.scale if self.params.mode == "task_arithmetic" else None,
                "merges": self.merges}
