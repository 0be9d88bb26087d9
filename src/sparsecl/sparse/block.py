"""The 'block' backend: a sparse linear layer computed b x b block by block (a gather-based block matmul).

``BlockLinear`` is a ``CSRLinear`` (same ``values`` parameter: the kept weights in row-major order of the
mask, same backend-agnostic state dicts, ``set_weight`` edit API, optimizer state form and RigL moment
re-gathering); only the arithmetic differs. The mask is covered by the b x b tiles (b = sparse.block) that
hold any kept weight; a tile's entries off the mask are zeros that get no gradient, so any mask works and
a ``topology=block`` mask (whole tiles) wastes nothing. Activations are used transposed (features, N), so a
gathered tile row is b contiguous runs of N floats. Per forward the kept values are scattered into row slabs
(block row r's tiles side by side, (b, n_r b)) and column slabs (block column c's tiles transposed):
  forward      y^T[row r]    = row slab r    @ x^T[cols of r's tiles]      (one GEMM per block row)
  input grad   dx^T[col c]   = column slab c @ dy^T[rows of c's tiles]     (one GEMM per block column)
  weight grad  row slab r    = dy^T[row r]   @ x^T[cols of r's tiles]^T    (only the kept tiles)
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


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    return t if t.shape[0] == rows else F.pad(t, (0, 0, 0, rows - t.shape[0]))


class _BlockMatmul(torch.autograd.Function):
    """Works on transposed activations (features, N): a gathered tile row of them is b contiguous runs of N
    floats, and every GEMM writes a contiguous slice of its output."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, values: torch.Tensor, layer: BlockLinear) -> torch.Tensor:
        xt = _pad_rows(x.t().contiguous(), layer.grid[1] * layer.block)  # (in_p, N)
        ctx.save_for_backward(x, xt, values)
        ctx.layer = layer
        return layer.row_gemms(xt, layer.slabs(values, layer.row_pos)).t()  # (N, out) as a transposed view

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, xt, values = ctx.saved_tensors
        layer: BlockLinear = ctx.layer
        if torch.is_grad_enabled():  # create_graph=True: exact second derivatives at dense cost
            dx, dv = dense_grad_path(layer, x, values, dy, ctx.needs_input_grad)
            return dx, dv, None
        dyt = _pad_rows(dy.t().contiguous(), layer.grid[0] * layer.block)  # (out_p, N)
        dx = dv = None
        if ctx.needs_input_grad[0]:
            dx = layer.col_gemms(dyt, layer.slabs(values, layer.col_pos)).t()
        if ctx.needs_input_grad[1]:
            dv = layer.row_grads(xt, dyt).index_select(0, layer.row_pos)
        return dx, dv, None


class BlockLinear(CSRLinear):
    """Drop-in replacement for a masked ``MaskableLinear`` that multiplies tile by tile (see the module)."""

    row_pos: torch.Tensor  # non-persistent buffers, rebuilt from the mask
    col_pos: torch.Tensor
    tile_rows: torch.Tensor
    tile_cols: torch.Tensor
    col_order: torch.Tensor
    block: int
    grid: tuple[int, int]  # (block rows, block columns)
    row_ptr: list[int]  # tiles of block row r: row_ptr[r]:row_ptr[r + 1] (row-major order)
    col_ptr: list[int]  # tiles of block column c, in col_order
    full_tiles: bool  # the kept weights fill their tiles (topology=block): slabs need no zeroing

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
        """The CSR index (for the dense fallback and ``flat``) plus the tile cover: kept tiles per block row
        (row-major) and per block column, and each kept weight's slot in the row slabs and the column slabs.

        Row slab r is the (b, n_r * b) matrix of block row r's tiles side by side (out x gathered in);
        column slab c the (b, n_c * b) matrix of block column c's tiles transposed (in x gathered out)."""
        super()._build_index()
        b, m = self.block, self._mask
        nr, nc = -(-self.out_features // b), -(-self.in_features // b)
        padded = torch.zeros(nr * b, nc * b, dtype=torch.bool, device=m.device)
        padded[:self.out_features, :self.in_features] = m
        grid = padded.view(nr, b, nc, b).any(3).any(1)  # (nr, nc): tiles holding any kept weight
        tr, tc = grid.nonzero(as_tuple=True)  # row-major
        k = len(tr)
        row_count = torch.bincount(tr, minlength=nr)
        row_start = row_count.cumsum(0) - row_count  # first tile of each block row
        col_order = torch.argsort(tc * nr + tr)
        col_rank = torch.empty_like(col_order)
        col_rank[col_order] = torch.arange(k, device=m.device)  # tile -> its place in column order
        col_count = torch.bincount(tc, minlength=nc)
        col_start = col_count.cumsum(0) - col_count
        tile_id = torch.full((nr, nc), -1, dtype=torch.long, device=m.device)
        tile_id[tr, tc] = torch.arange(k, device=m.device)
        rows, cols = m.nonzero(as_tuple=True)  # the order of ``values``
        t = tile_id[rows // b, cols // b]
        r, c = rows // b, cols // b
        row_pos = b * b * row_start[r] + (rows % b) * (row_count[r] * b) + (t - row_start[r]) * b + cols % b
        kc = col_rank[t]
        col_pos = b * b * col_start[c] + (cols % b) * (col_count[c] * b) + (kc - col_start[c]) * b + rows % b
        for name, v in (("row_pos", row_pos), ("col_pos", col_pos), ("tile_rows", tr.contiguous()),
                        ("tile_cols", tc.contiguous()), ("col_order", col_order)):
            self.register_buffer(name, v, persistent=False)
        self.grid = (nr, nc)
        self.row_ptr = [0, *row_count.cumsum(0).tolist()]
        self.col_ptr = [0, *col_count.cumsum(0).tolist()]
        self.full_tiles = k * b * b == len(rows)

    @property
    def n_tiles(self) -> int:
        return int(self.tile_rows.numel())

    def slabs(self, values: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """All row (or column) slabs, flat, holding the kept values (zeros elsewhere in their tiles)."""
        n = self.n_tiles * self.block * self.block
        buf = values.new_empty(n) if self.full_tiles else values.new_zeros(n)
        return buf.index_copy_(0, pos, values)

    def row_gemms(self, xt: torch.Tensor, slabs: torch.Tensor) -> torch.Tensor:
        """(W x)^T per block row: slab r (b, n_r b) @ the gathered input tile rows (n_r b, N); (out, N)."""
        b, n = self.block, xt.shape[1]
        xg = xt.view(self.grid[1], b * n)
        yt = xt.new_empty(self.grid[0] * b, n)
        for r in range(self.grid[0]):
            s, e = self.row_ptr[r], self.row_ptr[r + 1]
            if s == e:
                yt[r * b:(r + 1) * b].zero_()
                continue
            xs = xg.index_select(0, self.tile_cols[s:e]).view(-1, n)
            torch.mm(slabs[s * b * b:e * b * b].view(b, -1), xs, out=yt[r * b:(r + 1) * b])
        return yt[:self.out_features]

    def col_gemms(self, dyt: torch.Tensor, slabs: torch.Tensor) -> torch.Tensor:
        """(W^T dy)^T per block column: column slab c (b, n_c b) @ the gathered output tile rows; (in, N)."""
        b, n = self.block, dyt.shape[1]
        dg = dyt.view(self.grid[0], b * n)
        rows = self.tile_rows.index_select(0, self.col_order)
        dxt = dyt.new_empty(self.grid[1] * b, n)
        for c in range(self.grid[1]):
            s, e = self.col_ptr[c], self.col_ptr[c + 1]
            if s == e:
                dxt[c * b:(c + 1) * b].zero_()
                continue
            ds = dg.index_select(0, rows[s:e]).view(-1, n)
            torch.mm(slabs[s * b * b:e * b * b].view(b, -1), ds, out=dxt[c * b:(c + 1) * b])
        return dxt[:self.in_features]

    def row_grads(self, xt: torch.Tensor, dyt: torch.Tensor) -> torch.Tensor:
        """dL/d row slabs, flat: per block row, dy rows (b, N) @ the gathered input tile rows^T (N, n_r b)."""
        b, n = self.block, xt.shape[1]
        xg = xt.view(self.grid[1], b * n)
        out = xt.new_empty(self.n_tiles * b * b)
        for r in range(self.grid[0]):
            s, e = self.row_ptr[r], self.row_ptr[r + 1]
            if s < e:
                xs = xg.index_select(0, self.tile_cols[s:e]).view(-1, n)
                torch.mm(dyt[r * b:(r + 1) * b], xs.t(), out=out[s * b * b:e * b * b].view(b, -1))
        return out

    @torch.compiler.disable  # as csr's: compiled blocks call this layer eagerly
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        with torch.autocast(x.device.type, enabled=False):  # fp32 GEMMs, as csr (``out=`` needs one dtype)
            y = _BlockMatmul.apply(x.reshape(-1, self.in_features).to(self.values.dtype), self.values, self)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block={self.block}, tiles={self.n_tiles}"
