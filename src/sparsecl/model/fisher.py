"""Per-sequence gradients and the diagonal Fisher built from them: the one implementation EWC and the probes share.

The Fisher diagonal is the mean over sequences of the squared gradient of each sequence's mean token loss
(squaring a minibatch-mean gradient instead underestimates it 6-16x). Its labels (``FisherLabels``) are either
the data's next tokens ('empirical') or drawn from the model's own predictive distribution ('sampled', the true
Fisher). Gradients come from a loop over sequences, which works for every backend (a custom autograd function
need not support vmap); the sums run in float64 so that thousands of small squares keep their digits.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from sparsecl.model.gpt import lm_loss


class SeqGradStats:
    """Running sums over per-sequence gradients g_i (flat, float64): n, sum g_i^2 (the Fisher's numerator) and,
    with ``moments``, sum g_i and sum |g_i|^2 (what the gradient noise scale needs besides)."""

    def __init__(self, moments: bool = True) -> None:
        self.moments = moments
        self.n = 0
        self.sum: torch.Tensor | None = None
        self.sum_sq: torch.Tensor | None = None
        self.sum_norm2 = 0.0

    def add(self, g: torch.Tensor) -> None:
        g = g.double()
        self.n += 1
        sq = g * g
        if self.sum_sq is None:
            self.sum_sq = sq
        else:  # in place: the same sums without a fresh parameter-sized buffer per sequence
            self.sum_sq.add_(sq)
        if self.moments:
            if self.sum is None:
                self.sum = g.clone()
            else:
                self.sum.add_(g)
            self.sum_norm2 += float(g @ g)

    def fisher(self) -> torch.Tensor:
        """The Fisher diagonal, flat and float64: the mean of the squared per-sequence gradients."""
        assert self.sum_sq is not None, "no per-sequence gradient was added"
        return self.sum_sq / self.n


def flat_grads(grads: tuple[torch.Tensor | None, ...], params: list[nn.Parameter]) -> torch.Tensor:
    """Gradients (None -> zeros, a parameter the loss does not reach) as one vector aligned with ``params``."""
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params,
                                                                                            strict=True)])


def per_sequence_stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, gen: torch.Generator | None,
                       params: list[nn.Parameter] | None = None, moments: bool = True) -> SeqGradStats:
    """One gradient of the mean token loss per row of ``x``, over ``params`` (default: every trained tensor).

    ``y`` None gives 'sampled' labels: at every position a next token drawn from the model's float64 softmax of
    that same forward, sequence by sequence, with ``gen`` (a CPU generator, so CPU and CUDA draw alike)."""
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    stats = SeqGradStats(moments)
    for i in range(x.shape[0]):
        xi = x[i:i + 1]
        with torch.enable_grad():
            logits = model(xi)
            if y is None:
                probs = torch.softmax(logits.detach().double(), -1).reshape(-1, logits.shape[-1]).cpu()
                yi = torch.multinomial(probs, 1, generator=gen).view(1, -1).to(xi.device)
            else:
                yi = y[i:i + 1]
            g = torch.autograd.grad(lm_loss(logits, yi), params, allow_unused=True)
        stats.add(flat_grads(g, params).detach())
    return stats


def per_sequence_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None,
                        params: list[tuple[str, nn.Parameter]], gen: torch.Generator | None = None
                        ) -> dict[str, torch.Tensor]:
    """The Fisher diagonal on the rows of ``x`` per named parameter, in the parameter's dtype (``y`` None:
    'sampled' labels drawn with ``gen``)."""
    tensors = [p for _, p in params]
    diag = per_sequence_stats(model, x, y, gen, tensors, moments=False).fisher()
    out, i = {}, 0
    for n, p in params:
        out[n] = diag[i:i + p.numel()].view_as(p).to(p.dtype)
        i += p.numel()
    return out
