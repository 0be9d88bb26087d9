"""RigL dynamic sparse training (Evci et al. 2020, "Rigging the Lottery"), at fixed density, in every phase.

After every ``interval``-th optimizer step of a phase (while the step is below ``end`` x the phase's steps),
each masked layer (q, k, v, o, up, down separately) drops the k smallest-magnitude kept weights and grows k
connections absent after the drop with the largest dense-gradient magnitude (current batch, weights just
updated), where k = round(f(t) * nonzero) and f(t) = alpha / 2 * (1 + cos(pi * t / T_end)), the paper's cosine
decay.
Per-layer nonzero counts never change. As in the paper's Algorithm 1 the grow candidates are all connections
not kept after the drop, so a just-dropped one may be regrown; it then starts again at 0.

The dense gradient dL/dW = sum over tokens of dy^T x is needed exactly where the mask is 0, which neither
backend computes (the masked one multiplies by the mask, the csr one samples at kept positions); it is taken
explicitly from each layer's input x and output gradient dy, in one extra forward/backward every interval.

The optimizer is not rebuilt (that would reset every tensor's moments): for each changed layer the AdamW
moments are zeroed outside (old mask AND new mask), then, on csr, re-gathered in the new mask's order, so
every grown weight starts at 0 with zero moments and the invariant holds for the current mask at each step.
topology.json is rewritten after every update; it and the summary record the churn per phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from sparsecl.config import RunConfig
from sparsecl.errors import ConfigError
from sparsecl.methods.base import Batch, Method, TrainerView
from sparsecl.model.gpt import GPT, MaskableLinear
from sparsecl.sparse.apply import masked_layers
from sparsecl.sparse.csr import CSRLinear
from sparsecl.store.checkpoint import split_prefix

MOMENTS = ("exp_avg", "exp_avg_sq")


@dataclass
class RigLParams:
    interval: int = 100
    """Optimizer steps between two mask updates (Delta T)."""
    alpha: float = 0.3
    """Fraction of each layer's connections replaced at the first update; decays by a cosine."""
    end: float = 0.75
    """Updates stop after this fraction of each phase's steps (T_end / steps)."""

    def __post_init__(self) -> None:
        if self.interval < 1:
            raise ConfigError("method.params.interval", f"must be >= 1, got {self.interval}")
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError("method.params.alpha", f"must be in (0, 1], got {self.alpha}")
        if not 0.0 < self.end <= 1.0:
            raise ConfigError("method.params.end", f"must be in (0, 1], got {self.end}")


def update_fraction(step: int, t_end: int, alpha: float) -> float:
    """RigL's cosine schedule: alpha/2 (1 + cos(pi t / T_end)) for t < T_end, else 0 (no update)."""
    if step >= t_end:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * step / t_end))


def drop_grow(mask: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, k: int) -> torch.Tensor:
    """The new mask: drop the k kept entries with smallest |weight|, grow the k absent-after-drop entries with
    largest |grad| (ties: lowest flat index). Same shape and the same number of kept entries."""
    m = mask.flatten().bool()
    k = min(k, int(m.sum()))
    if k == 0:
        return mask.clone().bool()
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=m.device)
    w = torch.where(m, weight.detach().flatten().abs().double(), inf)
    new = m.clone()
    new[torch.argsort(w, stable=True)[:k]] = False
    g = torch.where(new, -inf, grad.detach().flatten().abs().double())
    new[torch.argsort(g, descending=True, stable=True)[:k]] = True
    return new.view(mask.shape)


def dense_gradients(model: GPT, modules: list[MaskableLinear], x: torch.Tensor,
                    y: torch.Tensor) -> dict[int, torch.Tensor]:
    """id(module) -> dL/dW as if every weight existed: sum over tokens of dy^T x on the batch (x, y)."""
    inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}

    def hook(mod: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        inputs[id(mod)], outputs[id(mod)] = args[0].detach(), out

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.enable_grad():
            loss = model.loss(x, y)
            keys = list(outputs)
            dys = torch.autograd.grad(loss, [outputs[k] for k in keys])
    finally:
        for h in handles:
            h.remove()
    with torch.autocast(x.device.type, enabled=False):  # the forward may be bf16; sum the outer products in fp32
        return {k: dy.reshape(-1, dy.shape[-1]).t().float() @ inputs[k].reshape(-1, inputs[k].shape[-1]).float()
                for k, dy in zip(keys, dys, strict=True)}


def _mask(mod: MaskableLinear) -> torch.Tensor:
    """The layer's current boolean mask (rigl only touches layers that have one)."""
    assert mod.mask is not None
    return mod.mask.detach().bool()


@torch.no_grad()
def remap_moments(opt: torch.optim.Optimizer | None, mod: MaskableLinear, old: torch.Tensor,
                  new: torch.Tensor) -> None:
    """Zero the layer's AdamW moments outside (old AND new) and, on csr, reorder them to the new mask."""
    if opt is None:
        return
    keep = old & new
    csr = isinstance(mod, CSRLinear)
    st = opt.state.get(mod.values if isinstance(mod, CSRLinear) else mod.weight, {})
    for key in MOMENTS:
        if key not in st:
            continue
        t = st[key]
        if csr:
            dense = torch.zeros(old.shape, dtype=t.dtype, device=t.device).masked_scatter(old, t)
            t.copy_((dense * keep)[new])
        else:
            t.mul_(keep)


class RigL(Method):
    name = "rigl"
    Params = RigLParams

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.start: dict[str, torch.Tensor] = {}  # module name -> mask at the start of the current phase
        self.churn: list[dict[str, Any]] = []  # one row per phase: updates, moved, net churn

    def validate_run(self, cfg: RunConfig) -> None:
        if cfg.sparse.is_dense:
            raise ConfigError("sparse.density", "rigl needs a sparse model (density < 1) to move connections in",
                              "set sparse.density below 1 or pick another method")

    def _modules(self, trainer: TrainerView) -> dict[str, MaskableLinear]:
        return {n: m for n, m in trainer.model.maskable().items() if m.mask is not None}

    def _row(self, phase: int) -> dict[str, Any]:
        if not self.churn or self.churn[-1]["phase"] != phase:
            self.churn.append({"phase": phase, "updates": 0, "moved": 0, "net_churn": 0.0})
        return self.churn[-1]

    def begin_phase(self, trainer: TrainerView, phase: int) -> None:
        self.start = {n: _mask(m).clone() for n, m in self._modules(trainer).items()}
        self._row(phase)

    def after_step(self, trainer: TrainerView, batch: Batch | None) -> None:
        """A step without a token batch (an rl phase) keeps the masks: there is no batch to grow by."""
        t = trainer.progress.phase_step + 1  # optimizer steps taken in this phase
        steps = trainer.cfg.schedule[trainer.progress.phase].steps
        t_end = max(1, round(self.params.end * steps))
        if t % self.params.interval or batch is None:
            return
        frac = update_fraction(t, t_end, self.params.alpha)
        if frac <= 0:
            return
        self.update(trainer, frac, batch)

    @torch.no_grad()
    def update(self, trainer: TrainerView, frac: float, batch: Batch) -> int:
        """One drop-and-grow on every masked layer, grown by the dense gradient on ``batch``; returns the
        connections moved."""
        mods = self._modules(trainer)
        grads = dense_gradients(trainer.model, list(mods.values()), *batch)
        moved = 0
        for mod in mods.values():
            old = _mask(mod).clone()
            new = old.clone()
            w, g = mod.dense_weight().detach(), grads[id(mod)]
            for _, (layer, rows) in masked_layers(trainer.model, trainer.cfg.sparse).items():
                if layer is not mod or bool(old[rows].all()):
                    continue
                k = round(frac * int(old[rows].sum()))
                new[rows] = drop_grow(old[rows], w[rows], g[rows], k)
            if torch.equal(new, old):
                continue
            remap_moments(trainer.optimizer, mod, old, new)
            mod.set_weight(w * (old & new), new)  # same nonzero count: csr keeps its ``values`` parameter
            moved += int((new & ~old).sum())
        row = self._row(trainer.progress.phase + 1)
        row["updates"] += 1
        row["moved"] += moved
        total = sum(int(s.sum()) for s in self.start.values())
        now = self._modules(trainer)
        net = sum(int((_mask(now[n]) & ~s).sum()) for n, s in self.start.items() if n in now)
        row["net_churn"] = round(net / total, 6) if total else 0.0
        trainer.masks_changed()
        return moved

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"start.{n}": m for n, m in self.start.items()}

    def state_json(self) -> dict[str, Any]:
        return {"churn": self.churn}

    def load_state(self, tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> None:
        self.start = {k: v.bool() for k, v in split_prefix(tensors, "start.").items()}
        self.churn = [dict(r) for r in js.get("churn", [])]

    def summary_info(self) -> dict[str, Any]:
        return {"churn": self.churn}

    def topology_info(self) -> dict[str, Any]:
        """Mask churn per phase: updates, connections moved (dropped and regrown), and net churn (fraction of
        the connections present now that were absent at the phase start)."""
        return {"churn": self.churn}
