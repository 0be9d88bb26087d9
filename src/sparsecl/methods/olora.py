"""O-LoRA (Wang et al. 2023, "Orthogonal Subspace Learning for Language Model Continual Learning").

One LoRA adapter set per phase (the ``lora`` method's machinery: frozen base, masked update
(W + (alpha / rank) B A) ⊙ M, earlier adapters frozen, kept or merged). While phase p trains, the loss adds
lam * sum over earlier adapter phases q and adapted layer parts of ||A_q A_p^T||_F^2, which pushes the new
adapter's input subspace (the row space of A_p) orthogonal to the earlier ones. The earlier A_q are kept as
method state (also when their adapters were merged), r·in floats per layer part and phase: the capacity
limit the study discusses (at most in / r phases fit orthogonally).

The summary records, per adapted phase p >= 2 at its end, the penalty sum ||A_q A_p^T||_F^2 (without lam)
and the subspace overlap: mean over layer parts of ||Q_old^T Q_p||_F^2 / r, where Q_p and Q_old are
orthonormal bases of A_p's row space and of all earlier A_q's row spaces together; 0 means orthogonal,
1 means A_p's subspace lies inside the earlier ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from sparsecl.errors import ConfigError
from sparsecl.methods.base import TrainerView
from sparsecl.methods.lora import LoRA, LoRAParams


@dataclass
class OLoRAParams(LoRAParams):
    at_phase_end: Literal["merge", "keep"] = "keep"
    """'keep' (as in the paper) keeps one frozen adapter per phase; 'merge' folds it into the base."""
    lam: float = 0.5
    """Weight lambda of the orthogonality penalty sum ||A_old A_new^T||_F^2 (the paper's lambda_1 = 0.5)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lam < 0:
            raise ConfigError("method.params.lam", f"must be >= 0, got {self.lam}")


def orthogonality_penalty(old: list[torch.Tensor], new: torch.Tensor) -> torch.Tensor:
    """sum over the old A (r, in) of ||A_old A_new^T||_F^2."""
    total = new.new_zeros(())
    for a in old:
        total = total + ((a @ new.t()) ** 2).sum()
    return total


def subspace_overlap(old: list[torch.Tensor], new: torch.Tensor) -> float:
    """||Q_old^T Q_new||_F^2 / rank(new) for orthonormal bases of the row spaces (0 orthogonal, 1 contained)."""
    q_new = torch.linalg.qr(new.detach().double().t()).Q  # (in, r)
    q_old = torch.linalg.qr(torch.cat([a.double() for a in old]).t()).Q  # (in, min(in, k r))
    return float(((q_old.t() @ q_new) ** 2).sum() / q_new.shape[1])


class OLoRA(LoRA):
    name = "olora"
    Params = OLoRAParams

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.old_a: dict[str, list[torch.Tensor]] = {}  # '<module>.<part>' -> A of each ended phase, in order
        self.overlaps: list[dict[str, Any]] = []
        self._pairs: list[tuple[list[torch.Tensor], torch.Tensor]] | None = None

    def _penalty_pairs(self, trainer: TrainerView) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
        if self._pairs is None:
            current = self.training_set()
            if current is None or current in self.ended or not self.old_a:
                self._pairs = []
            else:
                dev = trainer.device
                self._pairs = [([a.to(dev) for a in self.old_a[k]], ad.A)
                               for k, ad in self.adapters(trainer.model, current).items()]
        return self._pairs

    def penalty(self, trainer: TrainerView) -> torch.Tensor | None:
        pairs = self._penalty_pairs(trainer)
        if not pairs:
            return None
        return sum((orthogonality_penalty(old, new) for old, new in pairs), pairs[0][1].new_zeros(()))

    def add_penalty(self, trainer: TrainerView, loss: torch.Tensor) -> torch.Tensor:
        pen = None if self.params.lam == 0 else self.penalty(trainer)
        return loss if pen is None else loss + self.params.lam * pen

    def training_loss(self, trainer: TrainerView, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = trainer.model.loss(x, y)
        if self.params.lam == 0:
            return loss
        pen = self.penalty(trainer)
        return loss if pen is None else loss + self.params.lam * pen

    def begin_phase(self, trainer: TrainerView, phase: int) -> None:
        super().begin_phase(trainer, phase)
        self._pairs = None

    def end_phase(self, trainer: TrainerView, phase: int) -> None:
        if phase in self.sets and phase not in self.ended:
            new = {k: a.A.detach().clone() for k, a in self.adapters(trainer.model, phase).items()}
            if self.old_a:
                with torch.no_grad():
                    pen = sum(float(orthogonality_penalty(self.old_a[k], a)) for k, a in new.items())
                ov = sum(subspace_overlap(self.old_a[k], a) for k, a in new.items()) / len(new)
                self.overlaps.append({"phase": phase, "penalty": pen, "overlap": ov})
            for k, a in new.items():
                self.old_a.setdefault(k, []).append(a.cpu())
        super().end_phase(trainer, phase)
        self._pairs = None

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"old_a.{k}.{i}": a for k, lst in self.old_a.items() for i, a in enumerate(lst)}

    def state_json(self) -> dict[str, Any]:
        return {**super().state_json(), "overlaps": self.overlaps}

    def load_state(self, tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> None:
        self.overlaps = list(js.get("overlaps", []))
        found: dict[str, dict[int, torch.Tensor]] = {}
        for key, t in tensors.items():
            if key.startswith("old_a."):
                name, i = key[len("old_a."):].rsplit(".", 1)
                found.setdefault(name, {})[int(i)] = t
        self.old_a = {k: [v[i] for i in sorted(v)] for k, v in found.items()}
        self._pairs = None

    def summary_info(self) -> dict[str, Any]:
        return {**super().summary_info(), "lam": self.params.lam, "subspace_overlap": self.overlaps}
