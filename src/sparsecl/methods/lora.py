"""LoRA (Hu et al. 2021) for continual learning: the base weights are frozen, low-rank adapters train.

A targeted layer part (q, k, v, o, up, down) with weight W (rows, in) and mask M gets an adapter A (rank, in),
B (rows, rank); its effective weight is (W + (alpha / rank) B A) ⊙ M. The update goes through the mask, so a
sparse model's topology stays fixed and a merged weight keeps the mask invariant.

Design: the adapters are submodules ``<layer>.lora.p<phase>.<part>`` of the layer they adapt, and a forward
hook on that layer adds x ((alpha / rank) B A ⊙ M)^T to its output. Since the layer is linear this equals
the forward of (W + (alpha / rank) B A) ⊙ M, for the masked and the csr backend alike, without touching how
either stores W (a csr layer's dense weight is a read-only view). Merging writes through ``set_weight``, the
one edit both backends honour. The delta is built as a dense (rows, in) matrix: r·rows·in extra work per
forward, the price of one hook that works on every backend.

Being model parameters, the adapters are what AdamW sees: the frozen base (requires_grad off) gets no update
and no weight decay; the adapters (matrices) are decayed like every matrix, toward B A = 0, i.e. toward the
base. A new adapter set is new parameters, so each adapter phase starts a fresh AdamW (train.reset_optimizer
cannot carry moments over). The adapters are saved with the model (``model.*`` tensors), their optimizer
state by name, so a resume rebuilds them (``prepare_restore``) before loading.

At phase p (from phase 2 when ``full_first_phase``: a random base is no model to adapt, so phase 1 trains
everything as the "pretrained" base) a new adapter set p starts with A ~ N(0, 1/in), drawn from a generator
keyed by (seed, phase, layer, part), and B = 0, so the function is unchanged at its start.
At the phase end it is either merged into the base (``at_phase_end: merge``; its B is then zeroed, so the
saved adapter adds exactly nothing, and it is removed when the next set is added) or kept alongside the
earlier ones (``keep``: the base stays as it was, every phase's adapter adds its term); the next phase
freezes it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparsecl.config import RunConfig
from sparsecl.errors import ConfigError
from sparsecl.methods.base import Method, TrainerView
from sparsecl.methods.common import freeze, keyed
from sparsecl.model.gpt import MaskableLinear, maskable_layers

Part = Literal["q", "k", "v", "o", "up", "down"]
PARTS: tuple[Part, ...] = ("q", "k", "v", "o", "up", "down")


@dataclass
class LoRAParams:
    rank: int = 8
    """Rank r of every adapter (A is r x in, B is rows x r)."""
    alpha: float = 16.0
    """Scale numerator: the update is (alpha / rank) B A."""
    targets: list[Part] = field(default_factory=lambda: list(PARTS))
    """Layer parts that get an adapter (a non-empty subset of q, k, v, o, up, down)."""
    at_phase_end: Literal["merge", "keep"] = "merge"
    """'merge' folds the phase's adapter into the base at its end; 'keep' keeps one frozen adapter per phase."""
    full_first_phase: bool = True
    """Train the whole model in phase 1 (the random base becomes a trained one); adapters from phase 2 on."""

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError("method.params.rank", f"must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ConfigError("method.params.alpha", f"must be > 0, got {self.alpha}")
        if not self.targets:
            raise ConfigError("method.params.targets", "is empty", f"name some of {list(PARTS)}")
        if len(set(self.targets)) != len(self.targets):
            raise ConfigError("method.params.targets", f"lists a part twice: {self.targets}")


class Adapter(nn.Module):
    """One low-rank update B A of a (rows, in) block of a layer: A ~ N(0, 1/in), B = 0."""

    def __init__(self, rows: int, in_features: int, rank: int, gen: torch.Generator, like: torch.Tensor) -> None:
        super().__init__()
        a = torch.randn(rank, in_features, generator=gen) / in_features ** 0.5
        self.A = nn.Parameter(a.to(like.device, like.dtype))
        self.B = nn.Parameter(torch.zeros(rows, rank, device=like.device, dtype=like.dtype))


def adapter_sets(mod: nn.Module) -> nn.ModuleDict | None:
    """The adapter sets a layer carries (attribute ``lora``, attached at run time), or None."""
    return cast("nn.ModuleDict | None", getattr(mod, "lora", None))


def _adapter(sets: nn.ModuleDict, phase: int, part: str) -> Adapter:
    return cast(Adapter, cast(nn.ModuleDict, sets[f"p{phase}"])[part])


def layer_delta(mod: MaskableLinear, scale: float) -> torch.Tensor | None:
    """scale * (sum over the layer's adapter sets of B A) ⊙ M as a dense (out, in) weight; None if none."""
    sets = adapter_sets(mod)
    if sets is None or len(sets) == 0:
        return None
    blocks: list[torch.Tensor | None] = []
    like = None
    for part, _ in mod.part_rows():
        d = None
        for s in sets.values():
            s = cast(nn.ModuleDict, s)
            if part in s:
                a = cast(Adapter, s[part])
                ba = a.B @ a.A
                d = ba if d is None else d + ba
        blocks.append(d)
        like = d if d is not None else like
    if like is None:
        return None
    step = mod.out_features // len(mod.parts)
    delta = scale * torch.cat([like.new_zeros(step, mod.in_features) if d is None else d for d in blocks])
    mask = mod.mask
    return delta if mask is None else delta * mask


def _lora_hook(mod: MaskableLinear, inputs: tuple[torch.Tensor, ...], out: torch.Tensor, scale: float
               ) -> torch.Tensor:
    """Forward hook: adds x (delta ⊙ M)^T, so the layer computes (W + delta) ⊙ M. A module-level function
    reading the adapters from ``mod``, so deep copies of the model (teachers, probes) keep a working hook."""
    delta = layer_delta(mod, scale)
    return out if delta is None else out + F.linear(inputs[0], delta)


def targeted(model: nn.Module, targets: list[str]) -> dict[str, tuple[MaskableLinear, list[str]]]:
    """Module name -> (layer, its parts that get an adapter)."""
    out = {}
    for name, mod in maskable_layers(model).items():
        parts = [p for p in mod.parts if p in targets]
        if parts:
            out[name] = (mod, parts)
    return out


class LoRA(Method):
    name = "lora"
    Params = LoRAParams

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.sets: list[int] = []  # phases whose adapter set is in the model, in order
        self.ended: list[int] = []  # phases whose adapter set has finished its phase
        self.merged: list[int] = []  # phases whose adapter was folded into the base
        self.adapter_numel = 0  # adapter parameters now in the model

    def validate_run(self, cfg: RunConfig) -> None:
        p = self.params
        if p.rank > cfg.model.d_model:
            raise ConfigError("method.params.rank", f"{p.rank} exceeds d_model = {cfg.model.d_model}",
                              "a low-rank adapter needs rank <= the layer width")

    @property
    def scale(self) -> float:
        return self.params.alpha / self.params.rank

    # ------------------------------------------------------------------ the adapters in the model
    def _add_set(self, trainer: TrainerView, phase: int) -> None:
        for name, (mod, parts) in targeted(trainer.model, self.params.targets).items():
            sets = adapter_sets(mod)
            if sets is None:
                sets = nn.ModuleDict()
                mod.lora = sets
                mod.register_forward_hook(functools.partial(_lora_hook, scale=self.scale))
            like = mod.dense_weight()
            step = mod.out_features // len(mod.parts)
            sets[f"p{phase}"] = nn.ModuleDict({
                part: Adapter(step, mod.in_features, self.params.rank, keyed(trainer, "lora", phase, name, part), like)
                for part in parts})
        self.sets.append(phase)
        self._count(trainer.model)

    def _drop_set(self, trainer: TrainerView, phase: int) -> None:
        for mod, _ in targeted(trainer.model, self.params.targets).values():
            del cast(nn.ModuleDict, adapter_sets(mod))[f"p{phase}"]
        self.sets.remove(phase)
        self._count(trainer.model)

    def _count(self, model: nn.Module) -> None:
        self.adapter_numel = sum(p.numel() for n, p in model.named_parameters() if ".lora." in n)

    def adapters(self, model: nn.Module, phase: int) -> dict[str, Adapter]:
        """'<module>.<part>' -> the adapter of ``phase``'s set."""
        return {f"{n}.{part}": _adapter(cast(nn.ModuleDict, adapter_sets(mod)), phase, part)
                for n, (mod, parts) in targeted(model, self.params.targets).items() for part in parts}

    def training_set(self) -> int | None:
        """The newest adapter set: the one that trains (until the next phase adds its own)."""
        return self.sets[-1] if self.sets else None

    def _set_trainable(self, trainer: TrainerView) -> None:
        """Everything frozen except the newest adapter set. It stays trainable after its phase ends (merged or
        not), so phase-end probes see the parameters the method trains; the next phase's set replaces it."""
        freeze(trainer.model.parameters())
        current = self.training_set()
        if current is not None:
            for a in self.adapters(trainer.model, current).values():
                a.requires_grad_(True)

    @torch.no_grad()
    def _merge(self, trainer: TrainerView, phase: int) -> None:
        """W <- (W + scale * B A) ⊙ M for the phase's set (through set_weight), then B <- 0."""
        for mod, parts in targeted(trainer.model, self.params.targets).values():
            sets = cast(nn.ModuleDict, adapter_sets(mod))
            w = mod.dense_weight().detach().clone()
            for part, rows in mod.part_rows():
                if part in parts:
                    a = _adapter(sets, phase, part)
                    w[rows] += self.scale * (a.B @ a.A)
            mod.set_weight(w)  # multiplies by the mask, on both backends
            for part in parts:
                _adapter(sets, phase, part).B.zero_()
        self.merged.append(phase)

    # ------------------------------------------------------------------ hooks
    def begin_phase(self, trainer: TrainerView, phase: int) -> None:
        first = 2 if self.params.full_first_phase else 1
        if phase < first or phase in self.sets:
            return
        if self.params.at_phase_end == "merge":
            for old in list(self.sets):  # folded into the base, B = 0: they add nothing
                self._drop_set(trainer, old)
        self._add_set(trainer, phase)
        self._set_trainable(trainer)
        trainer.model_changed()

    def end_phase(self, trainer: TrainerView, phase: int) -> None:
        if phase not in self.sets:
            return
        self.ended.append(phase)
        if self.params.at_phase_end == "merge":
            self._merge(trainer, phase)

    def state_json(self) -> dict[str, Any]:
        return {"sets": self.sets, "ended": self.ended, "merged": self.merged}

    def prepare_restore(self, trainer: TrainerView, js: dict[str, Any]) -> None:
        """Rebuild the checkpoint's adapter sets (their values load with the model tensors) and what trains."""
        self.sets, self.ended, self.merged = [], list(js.get("ended", [])), list(js.get("merged", []))
        if not js.get("sets"):
            return  # phase 1 of full_first_phase: the plain model, all of it training
        for phase in js["sets"]:
            self._add_set(trainer, phase)
        self._set_trainable(trainer)
        trainer.model_changed()

    # ------------------------------------------------------------------ reporting
    def plain_checkpoints(self) -> bool:
        """Merged: a phase checkpoint's adapters have B = 0, so the base tensors alone are the model. Kept: not."""
        return self.params.at_phase_end == "merge"

    def summary_info(self) -> dict[str, Any]:
        return {"rank": self.params.rank, "alpha": self.params.alpha, "targets": list(self.params.targets),
                "at_phase_end": self.params.at_phase_end, "adapter_phases": self.ended, "merged": self.merged,
                "adapter_params": self.adapter_numel}

    def memory_bytes(self) -> int:
        """The adapters in the model (4 bytes each) plus whatever state the method keeps."""
        return 4 * self.adapter_numel + super().memory_bytes()
