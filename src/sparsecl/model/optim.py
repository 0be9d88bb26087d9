"""The optimizer every run uses (AdamW, decay on matrices and embeddings only) and its learning-rate schedule.

Both live beside the model, below ``train`` and ``probes``, so the trainer and the probes that rebuild an
AdamW step (``update_ratio``) share one schedule without importing each other.
"""

from __future__ import annotations

import math

import torch

from sparsecl.config import RunConfig, TrainConfig


def build_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay on parameters of dim >= 2; norms and biases are not decayed.

    The fused kernel is used where PyTorch has one for every parameter's device (CPU and CUDA since 2.4);
    with zero gradients it leaves zero weights and zero moments exactly zero, like the reference one.
    """
    params = [p for p in model.parameters() if p.requires_grad]

    def is_matrix(p: torch.nn.Parameter) -> bool:  # csr layers keep their matrix as 1-D values
        return p.dim() >= 2 or getattr(p, "sparse_values", False)

    decay = [p for p in params if is_matrix(p)]
    other = [p for p in params if not is_matrix(p)]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": other, "weight_decay": 0.0}]
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=fused)


def lr_at(cfg: RunConfig, step: int, steps: int, peak: float | None = None) -> float:
    """Linear warmup, then cosine to min_lr (or constant), restarted in every phase; a phase's own peak lr
    scales the whole curve."""
    t = cfg.train
    scale = 1.0 if peak is None else peak / t.lr
    lr, min_lr = t.lr * scale, t.min_lr * scale
    if t.warmup_steps and step < t.warmup_steps:
        return lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "constant":
        return lr
    span = max(1, steps - t.warmup_steps)
    progress = min(1.0, (step - t.warmup_steps) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))
