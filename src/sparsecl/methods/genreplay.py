"""Generative replay with the model itself as generator (after Shin et al. 2017, Deep Generative Replay).

Before every phase after the first, the current model (which has learned every earlier phase) samples
``samples`` sequences of block_size + 1 tokens, each starting from the document separator, at temperature
``temperature`` and from a generator keyed by (seed, phase), so the draw is fixed. These replace the
previous phase's samples (the new generator already covers what the old one did), and each training
batch replaces round(ratio * B) of its rows with samples drawn uniformly from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sparsecl.data.tokenizer import DOC_SEP
from sparsecl.errors import ConfigError
from sparsecl.methods.base import Method, TrainerView
from sparsecl.methods.buffer import token_dtype
from sparsecl.methods.common import check_ratio, keyed, n_replay, where


@dataclass
class GenReplayParams:
    samples: int = 64
    """Sequences the model generates before each phase after the first."""
    temperature: float = 1.0
    """Sampling temperature (1 = the model's own distribution)."""
    ratio: float = 0.25
    """Fraction of each batch's sequences drawn from the generated ones (the batch size stays the same)."""

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ConfigError("method.params.samples", f"must be >= 1, got {self.samples}")
        if self.temperature <= 0:
            raise ConfigError("method.params.temperature", f"must be > 0, got {self.temperature}")
        check_ratio("ratio", self.ratio)


@torch.no_grad()
def sample_sequences(model: torch.nn.Module, n: int, length: int, block_size: int, temperature: float,
                     gen: torch.Generator, device: torch.device, start: int = DOC_SEP) -> torch.Tensor:
    """(n, length) tokens: ``start`` then length - 1 tokens drawn autoregressively from the model."""
    was = model.training
    model.eval()
    idx = torch.full((n, 1), start, dtype=torch.long, device=device)
    for _ in range(length - 1):
        logits = model(idx[:, -block_size:])[:, -1, :].float() / temperature  # (n, V)
        nxt = torch.multinomial(torch.softmax(logits, dim=-1).cpu(), 1, generator=gen)
        idx = torch.cat([idx, nxt.to(device)], dim=1)
    model.train(was)
    return idx


class GenReplay(Method):
    name = "genreplay"
    rl_refused = "it mixes generated token windows into each step's token batch"
    Params = GenReplayParams

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.generated: torch.Tensor | None = None

    def begin_phase(self, trainer: TrainerView, phase: int) -> None:
        if phase < 2:
            return
        m = trainer.cfg.model
        seqs = sample_sequences(trainer.model, self.params.samples, m.block_size + 1, m.block_size,
                                self.params.temperature, keyed(trainer, "genreplay", phase), trainer.device)
        self.generated = seqs.cpu().to(token_dtype(m.vocab_size))

    def training_loss(self, trainer: TrainerView, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.generated is not None:
            k = n_replay(self.params.ratio, x.shape[0])
            if k:
                phase, step = where(trainer)
                idx = torch.randint(len(self.generated), (k,), generator=keyed(trainer, "genreplay-mix", phase, step))
                g = self.generated[idx].long().to(x.device)
                x = torch.cat([x[: x.shape[0] - k], g[:, :-1]])
                y = torch.cat([y[: y.shape[0] - k], g[:, 1:]])
        return trainer.model.loss(x, y)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.generated is None else {"generated": self.generated}

    def load_state(self, tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> None:
        self.generated = tensors["generated"].clone() if "generated" in tensors else None
