"""The 'block' backend: a sparse linear layer computed b x b tile by tile.

``BlockLinear`` is a ``CSRLinear`` (same ``values`` parameter: the kept weights in row-major order of the
mask, same backend-agnostic state dicts, ``set_weight`` edit API, optimizer state form and RigL moment
re-gathering); only the arithmetic differs. The mask is covered by the b x b tiles (b = sparse.block) that
hold any kept weight; a tile's entries off the mask are zeros that get no gradient, so any mask works and
a ``topology=block`` mask (whole tiles) wastes nothing. Per forward the kept values are scattered into
tiles, and the work is the kept tiles' share of the dense work, in GEMMs of width b, done one of two ways:

* tile loop (b >= TILE_LOOP_MIN_BLOCK): one GEMM per kept tile (r, c) on the activations (N, features) in
  place, y[:, r] += x[:, c] W_rc^T, dx[:, c] += dy[:, r] W_rc, dW_rc = dy[:, r]^T x[:, c]; nothing is
  gathered or transposed, and each call is large enough (>= 17 MFLOP at N = 512) to hide its overhead.
* gathered (smaller b): activations are used transposed (features, N), so a gathered tile row is b
  contiguous runs of N floats; row slabs hold block row r's tiles side by side (b, n_r b), column slabs
  block column c's tiles transposed:
    forward      y^T[row r]    = row slab r    @ x^T[cols of r's tiles]      (one GEMM per block row)
    input grad   dx^T[col c]   = column slab c @ dy^T[rows of c's tiles]     (one GEMM per block column)
    weight grad  c's tiles     = dy^T[rows of c's tiles] @ x^T[col c]^T      (the same gathered dy)
  so a step gathers two activation-sized operands per kept tile (dy once for both gradients).
Larger b is more efficient: at 10% on a 2-core AVX2 CPU, b >= 32 beats dense and b = 16 about breaks even
(benchmarks/sparse_linear.py). Widths that b does not divide get partial edge tiles. Double backward
(Hessian probes) takes the csr layer's differentiable dense path. Runs in the values' dtype (fp32 under
autocast), like csr.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparsecl.model.gpt import MaskableLinear
from sparsecl.sparse.csr import CSRLinear, dense_grad_path

TILE_LOOP_MIN_BLOCK = 128
"""Tile size from which one GEMM per tile beats gathering: fwd+bwd of a 3200 -> 12800 layer at 10%, N = 512, on
a 2-core AVX2 CPU took 139 ms in the tile loop vs 174 ms gathered at b = 128 (158 vs 256 ms for 12800 -> 3200),
but 386 vs 247 ms at b = 64, where the per-call overhead of 4-MFLOP GEMMs dominates."""


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    return t if t.shape[0] == rows else F.pad(t, (0, 0, 0, rows - t.shape[0]))


Grads = tuple[torch.Tensor | None, torch.Tensor | None]


def _backward(ctx: Any, dy: torch.Tensor, fast: Callable[..., Grads]) -> tuple[torch.Tensor | None, ...]:
    """Both paths' backward: ``fast(layer, x, values, kept, dy, needs)`` with what the forward kept besides x
    and the values, or, under create_graph=True, the csr layer's differentiable dense path (exact second derivatives
    at dense cost)."""
    x, values, kept = ctx.saved_tensors
    if torch.is_grad_enabled():
        return (*dense_grad_path(ctx.layer, x, values, dy, ctx.needs_input_grad), None)
    return (*fast(ctx.layer, x, values, kept, dy, ctx.needs_input_grad), None)


class _BlockMatmul(torch.autograd.Function):
    """Works on transposed activations (features, N): a gathered tile row of them is b contiguous runs of N
    floats, and every GEMM writes a contiguous slice of its output."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, values: torch.Tensor, layer: BlockLinear) -> torch.Tensor:
        xt = _pad_rows(x.t().contiguous(), layer.grid[1] * layer.block)  # (in_p, N)
        ctx.save_for_backward(x, values, xt)
        ctx.layer = layer
        return layer.row_gemms(xt, layer.slabs(values, layer.row_pos)).t()  # (N, out) as a transposed view

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return _backward(ctx, dy, _BlockMatmul.grads)

    @staticmethod
    def grads(layer: BlockLinear, x: torch.Tensor, values: torch.Tensor, xt: torch.Tensor, dy: torch.Tensor,
              needs: tuple[bool, ...]) -> Grads:
        dyt = _pad_rows(dy.t().contiguous(), layer.grid[0] * layer.block)  # (out_p, N)
        dxt, grads = layer.col_pass(dyt, xt, layer.slabs(values, layer.col_pos) if needs[0] else None, needs[1])
        return (None if dxt is None else dxt.t()), (None if grads is None else grads.index_select(0, layer.grad_pos))


class _TileMatmul(torch.autograd.Function):
    """One GEMM per kept tile on activations (N, features) in place (see the module). Operands are views made
    once per call (``split``/``unbind``), so the loop costs a few microseconds per tile besides its GEMM."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, values: torch.Tensor, layer: BlockLinear) -> torch.Tensor:
        b = layer.block
        tiles = layer.slabs(values, layer.tile_pos).view(-1, b, b)  # (k, b, b), row-major tile order
        ctx.save_for_backward(x, values, tiles)
        ctx.layer = layer
        y = x.new_empty(x.shape[0], layer.out_features)  # (N, out)
        xs, ys, wts = x.split(b, 1), y.split(b, 1), tiles.transpose(1, 2).unbind(0)  # x[:, c], y[:, r], W_rc^T
        for r in layer.empty_rows:
            ys[r].zero_()
        for j, (r, c, h, w) in enumerate(layer.tile_rc):  # beta = 0 overwrites: no zero fill
            ys[r].addmm_(xs[c], wts[j] if h == w == b else wts[j][:w, :h], beta=layer.row_first[j])
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return _backward(ctx, dy, _TileMatmul.grads)

    @staticmethod
    def grads(layer: BlockLinear, x: torch.Tensor, values: torch.Tensor, tiles: torch.Tensor, dy: torch.Tensor,
              needs: tuple[bool, ...]) -> Grads:
        b = layer.block
        dys = dy.contiguous().split(b, 1)  # dy[:, r]
        xs, ws = x.split(b, 1), tiles.unbind(0)
        dx = grads = None
        if needs[0]:
            dx = x.new_empty(x.shape)  # (N, in)
            dxs = dx.split(b, 1)
            for c in layer.empty_cols:
                dxs[c].zero_()
            for j, (r, c, h, w) in enumerate(layer.tile_rc):
                dxs[c].addmm_(dys[r], ws[j] if h == w == b else ws[j][:h, :w], beta=layer.col_first[j])
        if needs[1]:
            grads = tiles.new_empty(tiles.shape)  # (k, b, b)
            gs, dyts = grads.unbind(0), [d.t() for d in dys]
            for j, (r, c, h, w) in enumerate(layer.tile_rc):
                torch.mm(dyts[r], xs[c], out=gs[j] if h == w == b else gs[j][:h, :w])
        return dx, (None if grads is None else grads.view(-1).index_select(0, layer.tile_pos))


class BlockLinear(CSRLinear):
    """Drop-in replacement for a masked ``MaskableLinear`` that multiplies tile by tile (see the module)."""

    row_pos: torch.Tensor  # non-persistent buffers, rebuilt from the mask (the *_pos of one path only)
    col_pos: torch.Tensor
    grad_pos: torch.Tensor
    tile_pos: torch.Tensor
    tile_loop: bool  # b >= TILE_LOOP_MIN_BLOCK when the index was built: one GEMM per tile, else gathered
    tile_rows: torch.Tensor
    tile_cols: torch.Tensor
    col_order: torch.Tensor
    block: int
    grid: tuple[int, int]  # (block rows, block columns)
    row_ptr: list[int]  # tiles of block row r: row_ptr[r]:row_ptr[r + 1] (row-major order)
    col_ptr: list[int]  # tiles of block column c, in col_order
    full_tiles: bool  # the kept weights fill their tiles (topology=block): slabs need no zeroing
    tile_rc: list[tuple[int, int, int, int]]  # per kept tile (row-major): block row, block column, height, width
    row_first: list[int]  # per kept tile: 0 if it is its block row's first (its GEMM overwrites), else 1
    col_first: list[int]  # the same for its block column (row-major order)
    empty_rows: list[int]  # block rows without a kept tile (their y is 0)
    empty_cols: list[int]  # block columns without one (their dx is 0)

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
        """The CSR index of W (for the dense fallback and ``flat``) plus the tile cover: kept tiles per block row
        (row-major) and per block column, and each kept weight's slot in what its path multiplies.

        Row slab r is the (b, n_r * b) matrix of block row r's tiles side by side (out x gathered in);
        column slab c the (b, n_c * b) matrix of block column c's tiles transposed (in x gathered out)."""
        rows, cols = self._build_row_index()  # not csr's transposed index (16 bytes per kept weight): unused here
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
        t = tile_id[rows // b, cols // b]
        # Each path keeps only its own slots (8 bytes per kept weight each): the tile loop the slot in the
        # row-major tiles (k, b, b); the gathered GEMMs the slots in the row slabs, the column slabs and the
        # column-ordered tile gradients.
        self.tile_loop = b >= TILE_LOOP_MIN_BLOCK
        if self.tile_loop:
            slots = {"tile_pos": b * b * t + (rows % b) * b + cols % b}
        else:
            r, c, kc = rows // b, cols // b, col_rank[t]
            slots = {"row_pos": b * b * row_start[r] + (rows % b) * (row_count[r] * b) + (t - row_start[r]) * b
                     + cols % b,
                     "col_pos": b * b * col_start[c] + (cols % b) * (col_count[c] * b) + (kc - col_start[c]) * b
                     + rows % b,
                     "grad_pos": b * b * kc + (rows % b) * b + cols % b}
        for name, v in (*slots.items(), ("tile_rows", tr.contiguous()), ("tile_cols", tc.contiguous()),
                        ("col_order", col_order)):
            self.register_buffer(name, v, persistent=False)
        self.grid = (nr, nc)
        self.row_ptr = [0, *row_count.cumsum(0).tolist()]
        self.col_ptr = [0, *col_count.cumsum(0).tolist()]
        self.full_tiles = k * b * b == len(rows)
        rl, cl = tr.tolist(), tc.tolist()
        self.tile_rc = [(r, c, min(b, self.out_features - r * b), min(b, self.in_features - c * b))
                        for r, c in zip(rl, cl, strict=True)]
        self.row_first = [int(j > 0 and rl[j - 1] == r) for j, r in enumerate(rl)]
        seen: set[int] = set()
        self.col_first = []
        for c in cl:
            self.col_first.append(int(c in seen))
            seen.add(c)
        self.empty_rows = [r for r in range(nr) if self.row_ptr[r] == self.row_ptr[r + 1]]
        self.empty_cols = [c for c in range(nc) if self.col_ptr[c] == self.col_ptr[c + 1]]

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

    def col_pass(self, dyt: torch.Tensor, xt: torch.Tensor, slabs: torch.Tensor | None, weight_grad: bool
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per block column c, one gather of the output-gradient tile rows of c's tiles, ds (n_c b, N), for
        (W^T dy)^T[col c] = column slab c (b, n_c b) @ ds, when ``slabs`` is given, and for the gradients of
        c's tiles, ds @ x^T[col c]^T (n_c b, b), when ``weight_grad``: dx^T (in, N) and the tile gradients
        flat in column order (each tile row-major), or None for what was not asked."""
        b, n = self.block, dyt.shape[1]
        dg = dyt.view(self.grid[0], b * n)
        rows = self.tile_rows.index_select(0, self.col_order)
        dxt = None if slabs is None else dyt.new_empty(self.grid[1] * b, n)
        grads = dyt.new_empty(self.n_tiles * b * b) if weight_grad else None
        for c in range(self.grid[1]):
            s, e = self.col_ptr[c], self.col_ptr[c + 1]
            if s == e:
                if dxt is not None:
                    dxt[c * b:(c + 1) * b].zero_()
                continue
            ds = dg.index_select(0, rows[s:e]).view(-1, n)
            if dxt is not None and slabs is not None:
                torch.mm(slabs[s * b * b:e * b * b].view(b, -1), ds, out=dxt[c * b:(c + 1) * b])
            if grads is not None:
                torch.mm(ds, xt[c * b:(c + 1) * b].t(), out=grads[s * b * b:e * b * b].view(-1, b))
        return None if dxt is None else dxt[:self.in_features], grads

    @torch.compiler.disable  # as csr's: compiled blocks call this layer eagerly
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        with torch.autocast(x.device.type, enabled=False):  # fp32 GEMMs, as csr (``out=`` needs one dtype)
            x2 = x.reshape(-1, self.in_features).to(self.values.dtype)
            if self.tile_loop:
                y = _TileMatmul.apply(x2.contiguous(), self.values, self)
            else:
                y = _BlockMatmul.apply(x2, self.values, self)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block={self.block}, tiles={self.n_tiles}"
