"""A nanoGPT-class decoder-only transformer, readable top to bottom.

Pre-LayerNorm blocks, causal self-attention through scaled_dot_product_attention (with a switch to the
math kernel, which supports double backward for Hessian probes), GELU MLP, tied input/output embeddings.
Every attention and MLP projection is a ``MaskableLinear``; masks are attached from outside the model by
``sparsecl.sparse.apply``, so the model file knows nothing about topologies.

Shapes: B = batch, T = sequence length, C = d_model, H = n_head, D = C // H, F = MLP hidden, V = vocab.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import nullcontext
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from sparsecl.config import ModelConfig
from sparsecl.data.tokenizer import VOCAB_SIZE


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """Next-token cross entropy of logits (..., V) against token targets (...), over every position whose target is
    not -100 (the value sft gives prompt and padding positions): the language-model loss, wherever it is taken."""
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)


class _MaskedLinear(torch.autograd.Function):
    """y = x W^T + b for a W that is exactly 0 off its mask M, with dW = (dy^T x) ⊙ M.

    Equal to differentiating x (W ⊙ M)^T when W is 0 off M (the invariant every edit keeps, through
    ``set_weight``), but the forward is the plain dense matmul: no mask conversion or product per call,
    only one product on the weight gradient. The backward is built from differentiable ops, so double
    backward (Hessian probes) sees the same masked second derivatives. Under autocast the backward runs in
    the dtype the forward computed in.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor
                ) -> torch.Tensor:
        dev = x.device.type
        xc, wc = x, weight
        if torch.is_autocast_enabled(dev):
            dt = torch.get_autocast_dtype(dev)
            xc, wc = x.to(dt), weight.to(dt)
        ctx.save_for_backward(xc, wc, mask)
        ctx.has_bias = bias is not None
        return F.linear(xc, wc, None if bias is None else bias.to(wc.dtype))

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w, mask = ctx.saved_tensors
        dy = dy.to(w.dtype)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = dy @ w
        dy2 = dy.reshape(-1, dy.shape[-1])
        if ctx.needs_input_grad[1]:
            dw = (dy2.t() @ x.reshape(-1, x.shape[-1])).mul_(mask)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2.sum(0)
        return dx, dw, db, None


class MaskableLinear(nn.Module):
    """y = x W^T (+ b), where W may carry a fixed boolean mask.

    ``parts`` names the row blocks of a fused weight (q, k, v share one matmul but are separate layers
    for masks, allocation and diagnostics). With a mask, W is kept exactly 0 off it (``set_weight``) and
    the weight gradient is multiplied by the mask (``_MaskedLinear``), so gradients outside the mask are
    exactly zero; AdamW (moments and decay) then keeps those weights zero.
    """

    mask: torch.Tensor | None  # a buffer (register_buffer): declared for the type checker

    def __init__(self, in_features: int, out_features: int, bias: bool, parts: list[str]) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.parts = parts
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.register_buffer("mask", None)
        self.residual_out = False  # set by the model: output projections into the residual stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return F.linear(x, self.weight, self.bias)
        return _MaskedLinear.apply(x, self.weight, self.bias, self.mask)

    def dense_weight(self) -> torch.Tensor:
        """The effective (out, in) weight W * M; the csr backend's layer has the same method."""
        return self.weight if self.mask is None else self.weight * self.mask

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Replace the weight values (and the mask, if given); entries off the mask are stored as exact zeros.

        The one way to edit a sparse layer from outside, honoured by both backends (the csr layer stores only
        the kept values, so in-place edits of its ``weight`` would change a temporary). A new mask makes
        this layer's optimizer state stale: rebuild the optimizer afterwards (``Trainer.model_changed``).
        """
        if mask is not None:
            self.mask = mask.to(self.weight.device).bool().clone()
        w = weight.to(self.weight.device, self.weight.dtype)
        self.weight.copy_(w if self.mask is None else w * self.mask)

    def part_rows(self) -> list[tuple[str, slice]]:
        step = self.out_features // len(self.parts)
        return [(p, slice(i * step, (i + 1) * step)) for i, p in enumerate(self.parts)]

    def extra_repr(self) -> str:
        d = 1.0 if self.mask is None else self.mask.float().mean().item()
        return f"in={self.in_features}, out={self.out_features}, parts={self.parts}, density={d:.3f}"


def maskable_layers(module: nn.Module) -> dict[str, MaskableLinear]:
    """Every maskable projection inside ``module`` by its name there, e.g. 'blocks.0.attn.qkv' in a GPT or
    'attn.qkv' in a block: the one walk over masked layers (either backend, since CSRLinear is one too)."""
    return {n: m for n, m in module.named_modules() if isinstance(m, MaskableLinear)}


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every trained tensor, tied ones once, in a fixed order: what methods regularise
    and probes differentiate."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def param_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> name: how optimizer state is keyed by name in a checkpoint."""
    return {id(p): n for n, p in model.named_parameters()}


def param_masks(model: nn.Module) -> dict[int, torch.Tensor]:
    """id(parameter) -> bool mask of the entries that exist; parameters absent from it are fully present.

    Only a registered ``weight`` parameter counts: a csr layer's ``weight`` is computed (not read here, so
    no dense matrix is built) and its ``values`` parameter exists entirely."""
    out = {}
    for m in model.modules():
        mask = getattr(m, "mask", None)
        w = dict(m.named_parameters(recurse=False)).get("weight")
        if mask is not None and w is not None and mask.shape == w.shape:
            out[id(w)] = mask
    return out


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = MaskableLinear(cfg.d_model, 3 * cfg.d_model, cfg.bias, parts=["q", "k", "v"])
        self.o = MaskableLinear(cfg.d_model, cfg.d_model, cfg.bias, parts=["o"])
        self.o.residual_out = True
        self.dropout = cfg.dropout
        self.resid_drop = nn.Dropout(cfg.dropout)
        self.math_kernel = cfg.attn_backend == "math"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B,H,T,D)
        ctx = sdpa_kernel(SDPBackend.MATH) if self.math_kernel else nullcontext()
        with ctx:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_drop(self.o(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up = MaskableLinear(cfg.d_model, cfg.hidden, cfg.bias, parts=["up"])
        self.down = MaskableLinear(cfg.hidden, cfg.d_model, cfg.bias, parts=["down"])
        self.down.residual_out = True
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.up(x))  # (B, T, F): the units the dormant-unit probe reads
        return self.drop(self.down(h))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size == 0:  # a model config outside a run config: the default (byte) tokenizer's vocabulary
            cfg = dataclasses.replace(cfg, vocab_size=VOCAB_SIZE)
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.block_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Embeddings N(0, 0.02); projections N(0, 1/fan_in), residual outputs scaled by 1/sqrt(2L).

        Draws come from the global RNG, which the trainer seeds; masks later rescale rows to their
        actual fan-in (see ``sparsecl.sparse.apply``).
        """
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.02)
        for m in self.modules():
            if isinstance(m, MaskableLinear):
                std = 1.0 / math.sqrt(m.in_features)
                if m.residual_out:
                    std /= math.sqrt(2 * self.cfg.n_layer)
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def maskable(self) -> dict[str, MaskableLinear]:
        """Every maskable projection by module name, e.g. 'blocks.0.attn.qkv'."""
        return maskable_layers(self)

    def hidden_states(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """Residual stream after the embedding and after every block: n_layer + 1 tensors (B, T, C)."""
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        out = [x]
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) for token ids idx (B, T)."""
        B, T = idx.shape
        if T > self.cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.cfg.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # (B, T, V)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return lm_loss(self(idx), targets)

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def nonzero_count(self) -> int:
        return sum(int((p != 0).sum()) for p in self.parameters())
