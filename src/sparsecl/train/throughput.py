"""Per-block throughput switches applied from outside the model: activation checkpointing and torch.compile.

Both act on each ``Block`` in place, so parameter names, state dicts and checkpoints are those of the plain
model. Activation checkpointing keeps only each block's input and recomputes the rest during the backward
(PyTorch's composable non-reentrant checkpoint, the form FSDP2 composes with); compile hands each block's
forward to TorchDynamo/Inductor (``nn.Module.compile``), which compiles the first step of every new shape.
"""

from __future__ import annotations

from torch import nn
from torch.distributed._composable import checkpoint

from sparsecl.config import TrainConfig


def apply_throughput(model: nn.Module, t: TrainConfig) -> None:
    """Checkpoint and/or compile every block of ``model`` (idempotent: blocks already done are skipped)."""
    blocks = getattr(model, "blocks", [])
    for block in blocks:
        if t.activation_checkpointing and not getattr(block, "_sparsecl_ac", False):
            checkpoint(block)
            block._sparsecl_ac = True
        if t.compile and not getattr(block, "_sparsecl_compiled", False):
            block.compile()
            block._sparsecl_compiled = True
