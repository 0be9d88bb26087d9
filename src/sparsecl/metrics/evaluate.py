"""Evaluation of every domain on its fixed validation windows."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


@torch.no_grad()
def evaluate_domains(model: torch.nn.Module, val: dict[str, tuple[torch.Tensor, torch.Tensor]], batch_size: int,
                     device: torch.device) -> dict[str, dict[str, float]]:
    """Per domain: mean loss (nats/token), bits per byte and next-token accuracy over all target tokens.

    With the byte tokenizer a token is a byte, so bits per byte = loss / ln 2.
    """
    was_training = model.training
    model.eval()
    out = {}
    for name, (x, y) in val.items():
        loss_sum, correct, n = 0.0, 0, 0
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            logits = model(xb).float()
            loss_sum += F.cross_entropy(logits.view(-1, logits.size(-1)), yb.reshape(-1), reduction="sum").item()
            correct += int((logits.argmax(-1) == yb).sum())
            n += yb.numel()
        loss = loss_sum / n
        out[name] = {"loss": loss, "bpb": loss / math.log(2), "acc": correct / n, "tokens": n}
    model.train(was_training)
    return out
