"""Evaluation of every domain on its fixed validation windows."""

from __future__ import annotations

import math

import torch

from sparsecl.model.gpt import lm_loss


@torch.no_grad()
def evaluate_domains(model: torch.nn.Module, val: dict[str, tuple[torch.Tensor, torch.Tensor]], batch_size: int,
                     device: torch.device, target_bytes: dict[str, torch.Tensor] | None = None,
                     ) -> dict[str, dict[str, float]]:
    """Per domain: mean loss (nats/token), bits per byte and next-token accuracy over all target tokens.

    Bits per byte = summed NLL / (ln 2 * UTF-8 bytes of the target tokens) (DESIGN §10); ``target_bytes`` holds
    each target's byte count (shape of y). Without it every token is one byte (the byte tokenizer).
    """
    was_training = model.training
    model.eval()
    out = {}
    for name, (x, y) in val.items():
        loss_sum, correct, n = 0.0, 0, 0
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            logits = model(xb).float()
            loss_sum += lm_loss(logits, yb, reduction="sum").item()
            correct += int((logits.argmax(-1) == yb).sum())
            n += yb.numel()
        loss = loss_sum / n
        n_bytes = int(target_bytes[name].sum()) if target_bytes is not None else n
        out[name] = {"loss": loss, "bpb": loss_sum / (math.log(2) * n_bytes), "acc": correct / n, "tokens": n,
                     "bytes": n_bytes}
    model.train(was_training)
    return out
