"""Similarity-weighted interleaved replay (after Saxena, Shobe & McNaughton 2022, PNAS, SWIL).

SWIL replays old items in proportion to how similar their class is to the new one. Here a "domain" is
the domain set of the phase a buffered sequence came from. Rule, applied at the start of each phase p >= 2:

1. r_g = mean of the final normalised hidden state (ln_f output, what the LM head reads) over every token
   but the first of up to ``probe_seqs`` buffered sequences of group g; r_new the same over ``probe_seqs``
   fresh sequences of the phase's domains (a keyed draw).
2. s_g = cos(r_g, r_new);  weight w_g = (max(s_g, 0) + floor) / sum_h (max(s_h, 0) + floor).
3. During the phase each batch replaces round(ratio * B) rows with buffered sequences: group g with
   probability w_g, then a uniform slot among the group's current slots. The phase's own group takes part
   only if it was already in the buffer (a recurring domain), weighted like any other.

Similarities and weights per phase are recorded in the summary, so a near-uniform weighting (every domain
sharing a large mean component) is visible rather than hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from sparsecl.errors import ConfigError
from sparsecl.methods.base import TrainerView
from sparsecl.methods.common import BufferedMethod, check_ratio, keyed, n_replay, where

if TYPE_CHECKING:
    from sparsecl.model.gpt import GPT


@dataclass
class SimReplayParams:
    buffer_tokens: int = 65536
    """Buffer size in tokens; it holds buffer_tokens // (block_size + 1) sequences."""
    ratio: float = 0.25
    """Fraction of each batch's sequences drawn from the buffer (the batch size stays the same)."""
    floor: float = 0.05
    """Added to every clipped similarity so no old domain is starved entirely."""
    probe_seqs: int = 32
    """Sequences per group (and of the new data) whose mean hidden state represents it."""

    def __post_init__(self) -> None:
        if self.buffer_tokens < 1:
            raise ConfigError("method.params.buffer_tokens", f"must be >= 1, got {self.buffer_tokens}")
        check_ratio("ratio", self.ratio)
        if self.floor < 0:
            raise ConfigError("method.params.floor", f"must be >= 0, got {self.floor}")
        if self.probe_seqs < 1:
            raise ConfigError("method.params.probe_seqs", f"must be >= 1, got {self.probe_seqs}")


@torch.no_grad()
def mean_representation(model: GPT, x: torch.Tensor) -> torch.Tensor:
    """Mean over sequences and positions 1.. of ln_f(last hidden state), float32 (C,)."""
    h = model.ln_f(model.hidden_states(x)[-1]).float()  # (B, T, C)
    return h[:, 1:].reshape(-1, h.size(-1)).mean(0)


def similarity_weights(sims: list[float], floor: float) -> list[float]:
    raw = [max(s, 0.0) + floor for s in sims]
    total = sum(raw)
    return [r / total for r in raw] if total > 0 else [1.0 / len(raw)] * len(raw)


class SimReplay(BufferedMethod):
    name = "simreplay"
    Params = SimReplayParams

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.group_weights: dict[int, float] | None = None  # group id -> w_g, fixed for the phase
        self.history: list[dict[str, Any]] = []

    def begin_phase(self, trainer: TrainerView, phase: int) -> None:
        buf = self.ensure_buffer(trainer)
        self.group_weights = None
        if phase < 2 or buf.size == 0:
            return
        model, p = trainer.model, self.params
        was = model.training
        model.eval()
        groups = sorted({int(g) for g in buf.group[: buf.size]})
        x_new, _ = trainer.batch(trainer.current_domains, "simreplay-probe", phase)
        r_new = mean_representation(model, x_new[: p.probe_seqs])
        sims = []
        for g in groups:
            slots = (buf.group[: buf.size] == g).nonzero().flatten()[: p.probe_seqs]
            xg, _ = buf.batch(slots, trainer.device)
            sims.append(float(F.cosine_similarity(mean_representation(model, xg), r_new, dim=0)))
        model.train(was)
        w = similarity_weights(sims, p.floor)
        self.group_weights = dict(zip(groups, w, strict=True))
        self.history.append({"phase": phase, "groups": [self.groups[g] for g in groups],
                             "similarity": [round(s, 6) for s in sims], "weight": [round(x, 6) for x in w]})

    def training_loss(self, trainer: TrainerView, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        k = n_replay(self.params.ratio, x.shape[0]) if self.group_weights is not None else 0
        x_new, y_new = x[: x.shape[0] - k], y[: y.shape[0] - k]
        if k:
            assert self.buffer is not None
            phase, step = where(trainer)
            idx = self.buffer.sample_index(k, keyed(trainer, "simreplay", phase, step), self.slot_weights())
            xr, yr = self.buffer.batch(idx, x.device)
            x, y = torch.cat([x_new, xr]), torch.cat([y_new, yr])
        self.store(trainer, x_new, y_new)
        return trainer.model.loss(x, y)

    def slot_weights(self) -> torch.Tensor:
        """Per filled slot: w_g / (slots of group g now), 0 for groups outside this phase's weighting."""
        assert self.buffer is not None and self.group_weights is not None
        grp = self.buffer.group[: self.buffer.size].long()
        out = torch.zeros(len(grp), dtype=torch.float64)
        for g, wg in self.group_weights.items():
            sel = grp == g
            if sel.any():
                out[sel] = wg / int(sel.sum())
        return out if float(out.sum()) > 0 else torch.ones_like(out)

    def summary_info(self) -> dict[str, Any]:
        return {"similarity_rule": "w_g ∝ max(cos(mean ln_f state of g, of new data), 0) + floor",
                "phases": self.history}

    def state_json(self) -> dict[str, Any]:
        gw = None if self.group_weights is None else {str(k): v for k, v in self.group_weights.items()}
        return {**super().state_json(), "history": self.history, "group_weights": gw}

    def load_state(self, tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> None:
        super().load_state(tensors, js)
        self.history = list(js.get("history", []))
        gw = js.get("group_weights")
        self.group_weights = None if gw is None else {int(k): float(v) for k, v in gw.items()}
