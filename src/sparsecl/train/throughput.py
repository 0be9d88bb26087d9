"""Per-block throughput switches applied from outside the model: activation checkpointing and torch.compile.

Both act on each ``Block`` in place, so parameter names, state dicts and checkpoints are those of the plain
model. Activation checkpointing keeps only each block's input and recomputes the rest during the backward
(PyTorch's composable non-reentrant checkpoint, the form FSDP2 composes with); compile hands each block's
forward to TorchDynamo/Inductor (``nn.Module.compile``), which compiles the first step of every new shape and
grad mode (a training graph and an evaluation graph; identical blocks share them). Both compose with each
other, with DDP and FSDP2 and with bf16 autocast. The csr and block backends' layers run eagerly inside a
compiled block (``torch.compiler.disable``: Dynamo cannot trace their sparse kernels), so compile fuses only
the dense rest of such a block.
"""

from __future__ import annotations

import os
import shutil

import torch
from torch import nn
from torch.distributed._composable import checkpoint

from sparsecl.config import RunConfig, TrainConfig
from sparsecl.errors import ConfigError


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


def check_compile(cfg: RunConfig) -> None:
    """Refuse ``train.compile`` on the CPU without the C++ compiler Inductor builds its CPU kernels with (it
    takes $CXX, else g++); otherwise the first training step fails with a long traceback, after the run began."""
    if not cfg.train.compile or cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise ConfigError("train.compile", f"needs a C++ compiler on the CPU (Inductor uses $CXX, else g++), "
                          f"and '{cxx}' is not on PATH", "install g++, or set train.compile=false")
