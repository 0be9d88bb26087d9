"""DER++ (Buzzega et al. 2020, "Dark Experience for General Continual Learning"), for a language model.

The reservoir stores, with each sequence, the model's logits from the step it was trained on. Storing all
V logits of every position costs block * V * 4 bytes a sequence (128 * 256 * 4 = 128 KiB at block 128);
we store the top-k per position instead: values as float32 and vocabulary indices as int16/int32, i.e.
block * k * (4 + 2) bytes (12 KiB at k = 16), 10.7x less at V = 256 and far more at real vocabularies.
The top-k logits carry almost all of the softmax mass, and the logit-matching term is the MSE between the
current logits *at those k indices* and the stored values.

loss = CE(new batch) + alpha * MSE(logits[buffer batch 1] at stored indices, stored values)
       + beta * CE(buffer batch 2, stored next tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sparsecl.errors import ConfigError
from sparsecl.methods.base import TrainerView
from sparsecl.methods.common import BufferedMethod, keyed, where
from sparsecl.model.gpt import lm_loss


@dataclass
class DERPPParams:
    buffer_tokens: int = 65536
    """Buffer size in tokens; it holds buffer_tokens // (block_size + 1) sequences."""
    alpha: float = 0.3
    """Weight of the MSE between current and stored top-k logits."""
    beta: float = 0.5
    """Weight of the cross-entropy on buffered sequences' own next tokens."""
    topk: int = 16
    """Logits stored per position (the k largest)."""
    replay_batch: int = 0
    """Buffered sequences in each of the two replay terms (0 = half the training batch, at least 1)."""

    def __post_init__(self) -> None:
        if self.buffer_tokens < 1:
            raise ConfigError("method.params.buffer_tokens", f"must be >= 1, got {self.buffer_tokens}")
        for name in ("alpha", "beta"):
            if getattr(self, name) < 0:
                raise ConfigError(f"method.params.{name}", f"must be >= 0, got {getattr(self, name)}")
        if self.topk < 1:
            raise ConfigError("method.params.topk", f"must be >= 1, got {self.topk}")
        if self.replay_batch < 0:
            raise ConfigError("method.params.replay_batch", f"must be >= 0, got {self.replay_batch}")


def index_dtype(vocab_size: int) -> torch.dtype:
    return torch.int16 if vocab_size <= 32768 else torch.int32


class DERPP(BufferedMethod):
    name = "derpp"
    Params = DERPPParams

    def training_loss(self, trainer: TrainerView, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model, p = trainer.model, self.params
        k = min(p.topk, trainer.cfg.model.vocab_size)
        buf = self.ensure_buffer(trainer)
        logits = model(x)
        loss = lm_loss(logits, y)
        if buf.size:
            phase, step = where(trainer)
            n = p.replay_batch or max(1, x.shape[0] // 2)
            if p.alpha:
                idx = buf.sample_index(n, keyed(trainer, "derpp-logits", phase, step))
                xr, _ = buf.batch(idx, x.device)
                vals = buf.extra["topv"][idx].to(x.device)
                ind = buf.extra["topi"][idx].long().to(x.device)
                loss = loss + p.alpha * F.mse_loss(model(xr).float().gather(-1, ind), vals)
            if p.beta:
                idx = buf.sample_index(n, keyed(trainer, "derpp-labels", phase, step))
                xr, yr = buf.batch(idx, x.device)
                loss = loss + p.beta * lm_loss(model(xr), yr)
        top = logits.detach().float().topk(k, dim=-1)
        self.store(trainer, x, y, {"topv": top.values,
                                   "topi": top.indices.to(index_dtype(trainer.cfg.model.vocab_size))})
        return loss

    def summary_info(self) -> dict[str, Any]:
        return {"stored_logits": f"top-{self.params.topk} per position (float32 values, int16/int32 indices)"}
