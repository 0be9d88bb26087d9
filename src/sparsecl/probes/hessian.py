"""Curvature of the loss on a fixed curvature batch: lambda_max / lambda_min by Lanczos, trace by Hutchinson.

Hessian-vector products differentiate the cached gradient graph a second time, which needs the math SDPA
kernel. For a sparse model the Hessian lives on the existing weights only: probe vectors and products are
both projected with the masks, so the dead coordinates add neither spurious zero eigenvalues nor trace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn as nn

from sparsecl.model.gpt import GPT, trainable
from sparsecl.probes import register
from sparsecl.probes.context import ProbeContext, math_attention
from sparsecl.probes.linalg import flat_mask, flatten, hutchinson, lanczos

M = TypeVar("M", bound=nn.Module)


class HVP:
    """v -> H v for the loss ``loss_fn(model)`` w.r.t. all trainable parameters, restricted to the masks.

    Usable as a context manager: the math attention kernel stays on while products are taken.
    """

    def __init__(self, model: M, loss_fn: Callable[[M], torch.Tensor]) -> None:
        self.model = model
        self.params = [p for _, p in trainable(model)]
        self.mask = flat_mask(model, self.params)
        self.n = sum(p.numel() for p in self.params)
        self.n_existing = self.n if self.mask is None else int(self.mask.sum())
        self.calls = 0
        self._ctx = math_attention(model)
        self._ctx.__enter__()
        try:
            with torch.enable_grad():
                loss = loss_fn(model)
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
            self.grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params, strict=True)]
        except BaseException:
            self.close()
            raise

    def project(self, v: torch.Tensor) -> torch.Tensor:
        return v if self.mask is None else v * self.mask

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        v = self.project(v)
        chunks = []
        i = 0
        for p in self.params:
            chunks.append(v[i:i + p.numel()].view_as(p))
            i += p.numel()
        live = [i for i, g in enumerate(self.grads) if g.requires_grad]  # a gradient with no graph has zero HVP
        if not live:
            return torch.zeros_like(v)
        with torch.enable_grad():
            hv = torch.autograd.grad([self.grads[i] for i in live], self.params, grad_outputs=[chunks[i] for i in live],
                                     retain_graph=True, allow_unused=True)
        self.calls += 1
        return self.project(flatten(list(hv), self.params).detach())

    def close(self) -> None:
        self._ctx.__exit__(None, None, None)
        self.grads = []

    def __enter__(self) -> HVP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _curvature_loss(ctx: ProbeContext) -> Callable[[GPT], torch.Tensor]:
    x, y = ctx.mixed_batch(ctx.current, ctx.cfg.probe.curvature_batch)
    return lambda m: m.loss(x, y)


def extreme_eigenvalues(hvp: HVP, steps: int, gen: torch.Generator) -> tuple[float, float, int]:
    """(lambda_min, lambda_max, Lanczos steps taken) of the (masked) Hessian."""
    p0 = hvp.params[0]
    start = hvp.project(torch.randn(hvp.n, generator=gen).to(device=p0.device, dtype=p0.dtype))
    ritz = lanczos(hvp, start, min(steps, hvp.n_existing))
    return float(ritz[0]), float(ritz[-1]), len(ritz)


@register("hessian_eigs", "Hessian lambda_max and lambda_min by Lanczos with full reorthogonalisation on the "
          "curvature batch", "lanczos_steps HVPs (~2.3 gradients each)")
def hessian_eigs(ctx: ProbeContext) -> dict[str, float]:
    with HVP(ctx.model, _curvature_loss(ctx)) as hvp:
        lo, hi, m = extreme_eigenvalues(hvp, ctx.cfg.probe.lanczos_steps, ctx.generator("lanczos"))
    return {"lambda_max": hi, "lambda_min": lo, "lanczos_steps": float(m)}


@register("hessian_trace", "Hessian trace by Hutchinson (Rademacher, fixed sample count) with its standard error",
          "hutchinson_samples HVPs")
def hessian_trace(ctx: ProbeContext) -> dict[str, float]:
    n = ctx.cfg.probe.hutchinson_samples
    with HVP(ctx.model, _curvature_loss(ctx)) as hvp:
        p0 = hvp.params[0]
        mean, se, _ = hutchinson(hvp, hvp.n, n, ctx.generator("hutchinson"), hvp.mask, p0.device, p0.dtype)
        n_exist = hvp.n_existing
    return {"trace": mean, "trace_se": se, "samples": float(n), "trace_per_param": mean / n_exist}
