"""Experience replay (ER) from a reservoir buffer of token sequences (Chaudhry et al. 2019, tiny memories).

Each step keeps the batch size: round(ratio * B) rows are replaced by sequences drawn uniformly from the
buffer (once it holds any), and the new rows actually trained on are offered to the reservoir.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsecl.errors import ConfigError
from sparsecl.methods.base import TrainerView
from sparsecl.methods.common import BufferedMethod, check_ratio, keyed, n_replay, where


@dataclass
class ReplayParams:
    buffer_tokens: int = 65536
    """Buffer size in tokens; it holds buffer_tokens // (block_size + 1) sequences."""
    ratio: float = 0.25
    """Fraction of each batch's sequences drawn from the buffer (the batch size stays the same)."""

    def __post_init__(self) -> None:
        if self.buffer_tokens < 1:
            raise ConfigError("method.params.buffer_tokens", f"must be >= 1, got {self.buffer_tokens}")
        check_ratio("ratio", self.ratio)


class Replay(BufferedMethod):
    name = "replay"
    Params = ReplayParams

    def training_loss(self, trainer: TrainerView, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        buf = self.ensure_buffer(trainer)
        k = n_replay(self.params.ratio, x.shape[0]) if buf.size else 0
        x_new, y_new = x[: x.shape[0] - k], y[: y.shape[0] - k]
        if k:
            phase, step = where(trainer)
            xr, yr = buf.batch(buf.sample_index(k, keyed(trainer, "replay", phase, step)), x.device)
            x, y = torch.cat([x_new, xr]), torch.cat([y_new, yr])
        self.store(trainer, x_new, y_new)
        return trainer.model.loss(x, y)
