"""The 'semi24' backend: 2:4 semi-structured sparse matmuls (CUDA sm80+), for topology=nm at nm_n=2, nm_m=4.

A ``SemiStructuredLinear`` stores what a masked layer stores (dense weight, exact zeros off the mask; the
same parameters, state dict and optimizer state), so checkpoints and every method work unchanged. Under
fp16/bf16 autocast on a CUDA device of compute capability 8.0+ the forward compresses W (2 of every 4
inputs kept) with ``torch.sparse.to_sparse_semi_structured`` and runs the sparse tensor-core GEMM; the
backward is the masked layer's (dense dx, masked dW): the pattern of W^T is not 2:4, so only the forward
uses the sparse kernel (the runtime-sparsified forward of Mishra et al. 2021, "Accelerating Sparse Deep
Neural Networks"). Elsewhere (CPU, fp32, shapes the kernels reject) it computes exactly as 'masked'.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.sparse import to_sparse_semi_structured

from sparsecl.model.gpt import MaskableLinear, _MaskedLinear

HALF = (torch.float16, torch.bfloat16)


def semi24_runs(x: torch.Tensor, out_features: int, in_features: int) -> bool:
    """Whether the 2:4 kernel takes this call: CUDA sm80+, fp16/bf16 autocast, shapes the kernels accept
    (rows and columns multiples of 64, as to_sparse_semi_structured requires for its CUTLASS path)."""
    if not x.is_cuda or not torch.is_autocast_enabled("cuda") or torch.get_autocast_dtype("cuda") not in HALF:
        return False
    if torch.cuda.get_device_capability(x.device) < (8, 0):
        return False
    tokens = x.numel() // in_features
    return out_features % 64 == 0 and in_features % 64 == 0 and tokens % 64 == 0


class _Semi24Linear(_MaskedLinear):
    """Forward through the compressed 2:4 weight; backward inherited from the masked layer."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor
                ) -> torch.Tensor:
        dt = torch.get_autocast_dtype("cuda")
        xc, wc = x.to(dt), weight.to(dt)
        ctx.save_for_backward(xc, wc, mask)
        ctx.has_bias = bias is not None
        with torch.autocast("cuda", enabled=False):
            y = F.linear(xc.reshape(-1, x.shape[-1]), to_sparse_semi_structured(wc))
            if bias is not None:
                y = y + bias.to(dt)
        return y.view(*x.shape[:-1], weight.shape[0])


class SemiStructuredLinear(MaskableLinear):
    """A masked layer whose forward uses the 2:4 sparse kernel where it runs (see the module)."""

    @classmethod
    def from_masked(cls, mod: MaskableLinear) -> SemiStructuredLinear:
        new = cls.__new__(cls)
        new.__dict__.update(mod.__dict__)  # the same parameters, buffers and hooks: no copy
        return new

    def to_masked(self) -> MaskableLinear:
        mod = MaskableLinear.__new__(MaskableLinear)
        mod.__dict__.update(self.__dict__)
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask is None or not semi24_runs(x, self.out_features, self.in_features):
            return super().forward(x)
        return _Semi24Linear.apply(x, self.weight, self.bias, self.mask)
