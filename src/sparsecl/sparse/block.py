"""The 'block' backend: a sparse linear layer computed b x b block by block (a gather-based block matmul).

``BlockLinear`` is a ``CSRLinear`` (same ``values`` parameter: the kept weights in row-major order of the
mask, same backend-agnostic state dicts, ``set_weight`` edit API, optimizer state form and RigL moment
re-gathering); only the arithmetic differs. The mask is covered by the b x b tiles (b = sparse.block) that
hold any kept weight; a tile's entries off the mask are zeros that get no gradient, so any mask works and
a ``topology=block`` mask (whole tiles) wastes nothing. Per forward the kept values are scattered into a
(K, b, b) tile tensor (K tiles); then, per block row, the input columns of that row's tiles are gathered
and multiplied in one dense GEMM:
  forward      y[:, row r]   = x[:, cols of r's tiles]  @ tiles(r)^T        (one GEMM per block row)
  input grad   dx[:, col c]  = dy[:, rows of c's tiles] @ tiles(c)          (one GEMM per block column)
  weight grad  tiles(r)^T    = x[:, cols of r's tiles]^T @ dy[:, row r]     (only the kept tiles)
so the work is the kept tiles' share of the dense work, in GEMMs of width b: larger b is more efficient
(b >= 32 pays on a 2-core AVX2 CPU at 10%; b = 16 about breaks even, benchmarks/sparse_linear.py).
Widths that b does not divide are zero-padded. Double backward (Hessian probes) takes the csr layer's
differentiable dense path. Runs in the values' dtype (fp32 under autocast), like csr.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparsecl.model.gpt import MaskableLinear
from sparsecl.sparse.csr import CSRLinear, dense_grad_path


def _pad_cols(t: torch.Tensor, width: int) -> torch.Tensor:
    return t if t.shape[1] == width else F.pad(t, (0, width - t.shape[1]))


class _BlockMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, values: torch.Tensor, layer: BlockLinear) -> torch.Tensor:
        ctx.save_for_backward(x, values)
        ctx.layer = layer
        tiles_t = layer.tiles(values).transpose(1, 2).contiguous()  # (K, b_in, b_out)
        return layer.row_gemms(x, tiles_t)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, values = ctx.saved_tensors
        layer: BlockLinear = ctx.layer
        if torch.is_grad_enabled():  # create_graph=True: exact second derivatives at dense cost
            dx, dv = dense_grad_path(layer, x, values, dy, ctx.needs_input_grad)
            return dx, dv, None
        dx = dv = None
        if ctx.needs_input_grad[0]:
            dx = layer.col_gemms(dy, layer.tiles(values))
        if ctx.needs_input_grad[1]:
            dv = layer.tile_grads(x, dy).reshape(-1).index_select(0, layer.pos)
        return dx, dv, None


class BlockLinear(CSRLinear):
    """Drop-in replacement for a masked ``MaskableLinear`` that multiplies tile by tile (see the module)."""

    pos: torch.Tensor  # non-persistent buffers, rebuilt from the mask
    tile_rows: torch.Tensor
    tile_cols: torch.Tensor
    col_order: torch.Tensor
    block: int
    grid: tuple[int, int]  # (block rows, block columns)
    row_ptr: list[int]  # tiles of block row r: row_ptr[r]:row_ptr[r + 1] (row-major order)
    col_ptr: list[int]  # tiles of block column c, in col_order

    def __init__(self, in_features: int, out_features: int, bias: nn.Parameter | None, parts: list[str],
                 mask: torch.Tensor, weight: torch.Tensor, block: int = 16) -> None:
        object.__setattr__(self, "block", int(block))  # _build_index (called by the base) reads it
        super().__init__(in_features, out_features, bias, parts, mask, weight)

    @classmethod
    def from_masked(cls, mod: MaskableLinear, block: int = 16) -> BlockLinear:  # type: ignore[override]
        assert mod.mask is not None, "a layer without a mask has nothing to make sparse"
        new = cls(mod.in_features, mod.out_features, mod.bias, mod.parts, mod.mask, mod.weight, block)
        new.residual_out = mod.residual_out
        return new

    def _build_index(self) -> None:
        """The CSR index (for the dense fallback and ``flat``) plus the tile cover: kept tiles in row-major
        order, each kept weight's slot in the (K, b, b) tile tensor, tiles per block row and per column."""
        super()._build_index()
        b, m = self.block, self._mask
        nr, nc = -(-self.out_features // b), -(-self.in_features // b)
        padded = torch.zeros(nr * b, nc * b, dtype=torch.bool, device=m.device)
        padded[:self.out_features, :self.in_features] = m
        grid = padded.view(nr, b, nc, b).any(3).any(1)  # (nr, nc): tiles holding any kept weight
        tr, tc = grid.nonzero(as_tuple=True)
        tile_id = torch.full((nr, nc), -1, dtype=torch.long, device=m.device)
        tile_id[tr, tc] = torch.arange(len(tr), device=m.device)
        rows, cols = m.nonzero(as_tuple=True)
        pos = tile_id[rows // b, cols // b] * b * b + (rows % b) * b + cols % b
        col_order = torch.argsort(tc * nr + tr)
        for name, t in (("pos", pos), ("tile_rows", tr.contiguous()), ("tile_cols", tc.contiguous()),
                        ("col_order", col_order)):
            self.register_buffer(name, t, persistent=False)
        self.grid = (nr, nc)
        self.row_ptr = [0, *torch.bincount(tr, minlength=nr).cumsum(0).tolist()]
        self.col_ptr = [0, *torch.bincount(tc, minlength=nc).cumsum(0).tolist()]

    @property
    def n_tiles(self) -> int:
        return int(self.tile_rows.numel())

    def tiles(self, values: torch.Tensor) -> torch.Tensor:
        """(K, b, b) tiles holding the kept values (zeros elsewhere)."""
        b = self.block
        return values.new_zeros(self.n_tiles * b * b).index_copy(0, self.pos, values).view(-1, b, b)

    def row_gemms(self, x: torch.Tensor, tiles_t: torch.Tensor) -> torch.Tensor:
        """x (N, in) @ W^T as one GEMM per block row over the gathered input tiles."""
        b, (nr, nc) = self.block, self.grid
        n = x.shape[0]
        xb = _pad_cols(x, nc * b).reshape(n, nc, b)
        y = x.new_zeros(nr, n, b)
        for r in range(nr):
            s, e = self.row_ptr[r], self.row_ptr[r + 1]
            if s < e:
                xs = xb.index_select(1, self.tile_cols[s:e]).reshape(n, -1)
                torch.mm(xs, tiles_t[s:e].reshape(-1, b), out=y[r])
        return y.permute(1, 0, 2).reshape(n, nr * b)[:, :self.out_features]

    def col_gemms(self, dy: torch.Tensor, tiles: torch.Tensor) -> torch.Tensor:
        """dy (N, out) @ W as one GEMM per block column over the gathered output tiles."""
        b, (nr, nc) = self.block, self.grid
        n = dy.shape[0]
        db = _pad_cols(dy, nr * b).reshape(n, nr, b)
        by_col = tiles.index_select(0, self.col_order)
        rows = self.tile_rows.index_select(0, self.col_order)
        dx = dy.new_zeros(nc, n, b)
        for c in range(nc):
            s, e = self.col_ptr[c], self.col_ptr[c + 1]
            if s < e:
                ds = db.index_select(1, rows[s:e]).reshape(n, -1)
                torch.mm(ds, by_col[s:e].reshape(-1, b), out=dx[c])
        return dx.permute(1, 0, 2).reshape(n, nc * b)[:, :self.in_features]

    def tile_grads(self, x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        """dL/d tiles (K, b, b) = dy^T x restricted to the kept tiles, one GEMM per block row."""
        b, (nr, nc) = self.block, self.grid
        n = x.shape[0]
        xb = _pad_cols(x, nc * b).reshape(n, nc, b)
        dyp = _pad_cols(dy, nr * b)
        out = x.new_empty(self.n_tiles, b, b)  # stored transposed per tile: (b_in, b_out)
        for r in range(nr):
            s, e = self.row_ptr[r], self.row_ptr[r + 1]
            if s < e:
                xs = xb.index_select(1, self.tile_cols[s:e]).reshape(n, -1)
                torch.mm(xs.t(), dyp[:, r * b:(r + 1) * b], out=out[s:e].view(-1, b))
        return out.transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        with torch.autocast(x.device.type, enabled=False):  # fp32 GEMMs, as csr (``out=`` needs one dtype)
            y = _BlockMatmul.apply(x.reshape(-1, self.in_features).to(self.values.dtype), self.values, self)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block={self.block}, tiles={self.n_tiles}"
