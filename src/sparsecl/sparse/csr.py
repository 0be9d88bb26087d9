"""The 'csr' backend: a sparse linear layer that stores only its kept weights.

``CSRLinear`` holds one 1-D ``values`` parameter (the kept weights in row-major order of the mask), so
AdamW, clipping and weight decay work unchanged and nothing outside the mask exists, not even in the
optimizer. Index structures (CSR row pointers and columns of W and of W^T, and the permutation that
reorders values into W^T's order) are built once from the mask and cached as non-persistent buffers.

The autograd function (DESIGN §7):
  forward       y  = x W^T          as  (W_csr @ x^T)^T
  input grad    dx = dy W           as  (W^T_csr @ dy^T)^T, W^T sharing the values through the permutation
  weight grad   dW = dy^T x         only at the kept positions: torch.sparse.sampled_addmm
With create_graph=True (Hessian probes) the backward switches to differentiable dense ops, so double
backward is exact at dense cost.
Measured on 2 CPU threads at 1024x1024, 512 tokens: sampled_addmm took ~2-4 ms at 1-10% density where a
dense dy^T x followed by a gather took ~50 ms, so the sampled product is used at every density.

State dicts are backend-agnostic: a CSRLinear saves and loads ``weight`` (dense, zeros off the mask) and
``mask`` exactly like a masked ``MaskableLinear``, so checkpoints move freely between backends.

``weight`` and ``mask`` are computed read-only views: an in-place edit of either would change a temporary
and leave the layer (and its CSR index) as it was, so it raises. Edits go through ``set_weight(w, mask)``,
which both backends implement; assigning ``layer.mask = m`` is the same as ``set_weight(dense, m)``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn as nn

from sparsecl.model.gpt import MaskableLinear


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A CSR view of the kept weights; silences only PyTorch's 'beta' and 'invariant checks' notices, here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


_INPLACE_DUNDERS = frozenset({"__setitem__", "__set__", "__iadd__", "__isub__", "__imul__", "__itruediv__",
                              "__ifloordiv__", "__imod__", "__ipow__", "__iand__", "__ior__", "__ixor__",
                              "__ilshift__", "__irshift__", "__imatmul__"})


class ComputedTensor(torch.Tensor):
    """A tensor computed from a layer's state (a csr layer's dense ``weight`` or its ``mask``) that refuses
    in-place edits, which would act on the copy and silently leave the layer unchanged. Every other op works
    and returns a plain tensor; autograd flows through it."""

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        inplace = (name.endswith("_") and not name.endswith("__")) or name in _INPLACE_DUNDERS
        if (inplace and args and isinstance(args[0], cls)) or isinstance((kwargs or {}).get("out"), cls):
            raise RuntimeError(f"in-place '{name}' on a csr layer's computed weight or mask would edit a temporary "
                               f"copy and leave the layer unchanged: use layer.set_weight(weight, mask)")
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


class SparseValues(nn.Parameter):
    """The kept weights of a csr layer: a 1-D parameter that is a matrix for weight decay.

    A subclass rather than an attribute so that copies (deepcopy of a model for a teacher or a probe)
    keep the marker."""

    sparse_values = True


def dense_grad_path(layer: CSRLinear, x: torch.Tensor, values: torch.Tensor, dy: torch.Tensor,
                    needs: tuple[bool, ...]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dx, d values) through differentiable dense ops, for create_graph=True (Hessian-vector products,
    double backward): second derivatives are exact at dense cost; training never takes this path."""
    flat = layer.flat
    w = values.new_zeros(layer.out_features * layer.in_features).index_copy(0, flat, values)
    dx = dy @ w.view(layer.out_features, layer.in_features) if needs[0] else None
    dv = (dy.t() @ x).reshape(-1).index_select(0, flat) if needs[1] else None
    return dx, dv


class _CSRMatmul(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)  # sparse kernels run in fp32 under autocast
    def forward(ctx: Any, x: torch.Tensor, values: torch.Tensor, layer: CSRLinear) -> torch.Tensor:
        w = _csr(layer.crow, layer.col, values, (layer.out_features, layer.in_features))
        ctx.save_for_backward(x, values)
        ctx.layer = layer
        return (w @ x.t()).t()  # (N, out) as a transposed view: a following csr layer reads it as (in, N) uncopied

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, values = ctx.saved_tensors
        layer: CSRLinear = ctx.layer
        dx = dv = None
        if torch.is_grad_enabled():
            dx, dv = dense_grad_path(layer, x, values, dy, ctx.needs_input_grad)
            return dx, dv, None
        if ctx.needs_input_grad[0]:
            wt = _csr(layer.t_crow, layer.t_col, values[layer.t_perm], (layer.in_features, layer.out_features))
            dx = (wt @ dy.t()).t()  # (N, in), transposed view like the forward output
        if ctx.needs_input_grad[1]:
            w = _csr(layer.crow, layer.col, values, (layer.out_features, layer.in_features))
            dv = torch.sparse.sampled_addmm(w, dy.t(), x, beta=0.0).values()
        return dx, dv, None


class CSRLinear(MaskableLinear):
    """Drop-in replacement for a masked ``MaskableLinear`` whose parameters are only the kept weights.

    ``weight`` and ``dense_weight()`` give the dense effective weight (zeros off the mask, differentiable
    with respect to ``values``); ``mask`` is the same (out, in) bool tensor as on the masked module. Both
    read-only (see ``ComputedTensor``); ``set_weight`` (or assigning ``mask``) rebuilds values and index.
    """

    _mask: torch.Tensor  # buffers (register_buffer): declared for the type checker
    crow: torch.Tensor
    col: torch.Tensor
    t_crow: torch.Tensor
    t_col: torch.Tensor
    t_perm: torch.Tensor

    def __init__(self, in_features: int, out_features: int, bias: nn.Parameter | None, parts: list[str],
                 mask: torch.Tensor, weight: torch.Tensor) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = in_features, out_features
        self.parts = parts
        self.residual_out = False
        self.register_buffer("_mask", mask.bool().clone())
        self._build_index()
        self.values = SparseValues(weight.detach()[self._mask].clone())  # the trainer decays these like matrices
        self.bias = bias

    @classmethod
    def from_masked(cls, mod: MaskableLinear) -> CSRLinear:
        assert mod.mask is not None, "a layer without a mask has nothing to make sparse"
        new = cls(mod.in_features, mod.out_features, mod.bias, mod.parts, mod.mask, mod.weight)
        new.residual_out = mod.residual_out
        return new

    def to_masked(self) -> MaskableLinear:
        mod = MaskableLinear(self.in_features, self.out_features, False, self.parts)
        mod.bias = self.bias
        mod.residual_out = self.residual_out
        with torch.no_grad():
            mod.weight = nn.Parameter(self.dense_weight().detach().clone())
        mod.mask = self._mask.clone()
        return mod

    def _build_index(self) -> None:
        """Cache CSR indices of W and W^T and the value permutation W -> W^T (rebuilt only if the mask changes)."""
        rows, cols = self._build_row_index()
        perm = torch.argsort(cols * self.out_features + rows)
        t_crow = torch.zeros(self.in_features + 1, dtype=torch.long, device=cols.device)
        t_crow[1:] = torch.bincount(cols, minlength=self.in_features).cumsum(0)
        for name, t in (("t_crow", t_crow), ("t_col", rows[perm].contiguous()), ("t_perm", perm)):
            self.register_buffer(name, t, persistent=False)

    def _build_row_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The CSR index of W (``crow``, ``col``): the order of ``values``, and all that ``flat`` and the dense
        paths need. Returns the kept weights' (rows, cols)."""
        m = self._mask
        rows, cols = m.nonzero(as_tuple=True)  # row-major: the order of ``values``
        crow = torch.zeros(self.out_features + 1, dtype=torch.long, device=m.device)
        crow[1:] = torch.bincount(rows, minlength=self.out_features).cumsum(0)
        self.register_buffer("crow", crow, persistent=False)
        self.register_buffer("col", cols.contiguous(), persistent=False)
        return rows, cols

    @property
    def flat(self) -> torch.Tensor:
        """Flat (row-major) positions of the kept weights; derived on demand to save 8 bytes per weight."""
        rows = torch.repeat_interleave(torch.arange(self.out_features, device=self.crow.device), self.crow.diff())
        return rows * self.in_features + self.col

    @property
    def nnz(self) -> int:
        return int(self.col.numel())

    def dense_weight(self) -> torch.Tensor:
        """The dense (out, in) effective weight, zeros off the mask; differentiable in ``values``."""
        flat = self.values.new_zeros(self.out_features * self.in_features)
        return flat.index_copy(0, self.flat, self.values).view(self.out_features, self.in_features)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """The dense effective weight, read-only: write with ``set_weight``."""
        return self.dense_weight().as_subclass(ComputedTensor)

    @property
    def mask(self) -> torch.Tensor:  # type: ignore[override]
        """The (out, in) bool mask, read-only: change it with ``set_weight`` or by assigning ``mask``."""
        return self._mask.as_subclass(ComputedTensor)

    @mask.setter
    def mask(self, mask: torch.Tensor) -> None:
        self.set_weight(self.dense_weight().detach(), mask)

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Replace the kept values by ``weight``'s entries on the mask (and the mask first, if given).

        A mask with another number of connections gives ``values`` a new parameter object (same
        requires_grad); any new mask makes this layer's optimizer state stale: rebuild the optimizer."""
        if mask is not None:
            if tuple(mask.shape) != (self.out_features, self.in_features):
                raise ValueError(f"mask shape {tuple(mask.shape)} does not match ({self.out_features}, "
                                 f"{self.in_features})")
            mask = mask.to(self._mask.device).bool()
            if not torch.equal(mask, self._mask):
                self._mask = mask.clone()
                self._build_index()
        kept = weight.to(self.values.device, self.values.dtype)[self._mask]
        if kept.numel() == self.values.numel():
            self.values.copy_(kept)
        else:
            self.values = SparseValues(kept.clone(), requires_grad=self.values.requires_grad)

    @torch.compiler.disable  # TorchDynamo cannot trace sparse CSR kernels: compiled blocks call this layer eagerly
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        with torch.autocast(x.device.type, enabled=False):  # sparse kernels have no bf16/fp16 CPU path: fp32
            y = _CSRMatmul.apply(x.reshape(-1, self.in_features).to(self.values.dtype), self.values, self)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

    # -------------------------------------------------------------- backend-agnostic state dicts
    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        w = self.dense_weight()
        destination[prefix + "weight"] = w if keep_vars else w.detach()
        destination[prefix + "mask"] = self._mask
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: Any, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        mask = state_dict.get(prefix + "mask")
        shape = (self.out_features, self.in_features)
        if mask is not None and tuple(mask.shape) != shape:
            error_msgs.append(f"{prefix}mask: shape {tuple(mask.shape)} does not match {shape}")
            mask = None
        weight = state_dict.get(prefix + "weight")
        if weight is None:
            missing_keys.append(prefix + "weight")
        elif tuple(weight.shape) != shape:
            error_msgs.append(f"{prefix}weight: shape {tuple(weight.shape)} does not match {shape}")
            weight = None
        if weight is not None or mask is not None:  # a new mask may give ``values`` a new parameter object
            self.set_weight(self.dense_weight().detach() if weight is None else weight, mask)
        if self.bias is not None:
            b = state_dict.get(prefix + "bias")
            if b is None:
                missing_keys.append(prefix + "bias")
            else:
                with torch.no_grad():
                    self.bias.copy_(b)
        for key in state_dict:
            rest = key[len(prefix):]
            if key.startswith(prefix) and "." not in rest and rest not in ("weight", "mask", "bias"):
                unexpected_keys.append(key)
