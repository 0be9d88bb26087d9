"""The block backend against masked and csr, backend=auto's per-layer choice, and the 2:4 fallback on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_csr import _train_losses, _trainer, tiny

from sparsecl.config import SparseConfig, build_config
from sparsecl.model.gpt import GPT, MaskableLinear
from sparsecl.rng import keyed_generator
from sparsecl.sparse import block as block_module
from sparsecl.sparse.apply import apply_sparsity
from sparsecl.sparse.backends import (
    BLOCK_BREAK_EVEN,
    MIN_SPARSE_WORK,
    explain_backend,
    swap_backend,
    tile_fill,
)
from sparsecl.sparse.block import TILE_LOOP_MIN_BLOCK, BlockLinear
from sparsecl.sparse.csr import CSRLinear
from sparsecl.sparse.topology import TOPOLOGIES
from sparsecl.train.runner import run_experiment

torch.set_num_threads(1)


def _masked(out_f: int, in_f: int, mask: torch.Tensor, dtype: torch.dtype) -> MaskableLinear:
    torch.manual_seed(0)
    m = MaskableLinear(in_f, out_f, True, ["x"]).to(dtype)
    torch.nn.init.normal_(m.weight)
    torch.nn.init.normal_(m.bias)
    m.set_weight(m.weight.detach(), mask)
    return m


def _grads(mod: torch.nn.Module, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.detach().clone().requires_grad_()
    y = mod(x)
    (y * g).sum().backward()
    w = mod.weight.grad[mod.mask] if isinstance(mod, MaskableLinear) and not isinstance(mod, CSRLinear) \
        else mod.values.grad
    return y.detach(), x.grad, w, mod.bias.grad


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("shape,block,kind", [((72, 40), 16, "block"), ((64, 96), 32, "block"),
                                              ((50, 33), 8, "er"), ((48, 48), 16, "block"),
                                              ((300, 520), 128, "block"), ((520, 300), 128, "block"),
                                              ((260, 300), 128, "er")])
def test_block_forward_and_gradients_match_masked(dtype: torch.dtype, tol: float, shape: tuple[int, int],
                                                  block: int, kind: str) -> None:
    """Outputs, input, kept-weight and bias gradients equal masked's (fp32: 1e-5 relative), also with padded
    edge tiles (72x40 at b=16, 300x520 at b=128), block rows and columns without a tile (520x300) and masks that
    only partly fill their tiles (er); b = 128 takes the tile loop, the others the gathered GEMMs."""
    out_f, in_f = shape
    cfg = SparseConfig(density=0.25, topology=kind, block=block)
    mask = TOPOLOGIES[kind](out_f, in_f, 0.25, keyed_generator(0, "t"), cfg)
    m = _masked(out_f, in_f, mask, dtype)
    b = BlockLinear.from_masked(_masked(out_f, in_f, mask, dtype), block)
    assert b.values.numel() == int(mask.sum()) and torch.equal(b.dense_weight(), m.dense_weight())
    x = torch.randn(3, 7, in_f, dtype=dtype)
    g = torch.randn(3, 7, out_f, dtype=dtype)
    for a, ref in zip(_grads(b, x, g), _grads(m, x, g), strict=True):
        assert float((a - ref).norm() / ref.norm()) < tol


def test_block_tiles_cover_exactly_the_kept_blocks() -> None:
    cfg = SparseConfig(density=0.1, topology="block", block=16)
    mask = TOPOLOGIES["block"](128, 256, 0.1, keyed_generator(0, "t"), cfg)
    b = BlockLinear.from_masked(_masked(128, 256, mask, torch.float32), 16)
    assert b.n_tiles * 256 == int(mask.sum())  # whole tiles: nothing stored off the mask
    assert tile_fill(mask, 16) == 1.0


@pytest.mark.parametrize("block,per_weight", [(16, {"col", "row_pos", "col_pos", "grad_pos"}),
                                              (128, {"col", "tile_pos"})])
def test_block_layer_keeps_only_its_paths_index(block: int, per_weight: set[str]) -> None:
    """8 bytes per kept weight for each index the layer's path reads (the gathered GEMMs below b = 128, the tile
    loop from it), none for csr's transposed index."""
    cfg = SparseConfig(density=0.25, topology="block", block=block)
    mask = TOPOLOGIES["block"](256, 512, 0.25, keyed_generator(0, "t"), cfg)
    b = BlockLinear.from_masked(_masked(256, 512, mask, torch.float32), block)
    assert b.tile_loop == (block >= TILE_LOOP_MIN_BLOCK)
    assert {n for n, t in b.named_buffers() if t.numel() == b.nnz} == per_weight


@pytest.mark.parametrize("tile_loop_from", [TILE_LOOP_MIN_BLOCK, 1])
def test_block_double_backward_matches_masked(tile_loop_from: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(block_module, "TILE_LOOP_MIN_BLOCK", tile_loop_from)
    mask = torch.rand(24, 32, generator=torch.Generator().manual_seed(1)) < 0.3
    m = _masked(24, 32, mask, torch.float64)
    b = BlockLinear.from_masked(_masked(24, 32, mask, torch.float64), 8)
    x = torch.randn(5, 32, dtype=torch.float64)
    hv = []
    for mod, p in ((m, m.weight), (b, b.values)):
        (gp,) = torch.autograd.grad(torch.tanh(mod(x)).pow(2).sum(), p, create_graph=True)
        (h,) = torch.autograd.grad(gp.sum(), p)
        hv.append(h[mask] if p is m.weight else h)
    assert float((hv[0] - hv[1]).abs().max()) < 1e-12


def test_block_run_follows_masked_loss_curve_and_resumes_like_csr(tmp_path: Path) -> None:
    """Same seed, topology=block: masked and block training losses agree (fp32), and a block checkpoint loads into
    a masked run (state dicts are backend-agnostic)."""
    curves = {}
    for backend in ("masked", "block"):
        t = _trainer(tmp_path, tiny(density=0.25, topology="block", block=8, backend=backend), backend)
        assert all(isinstance(mm, BlockLinear) == (backend == "block") for mm in t.model.maskable().values())
        curves[backend] = _train_losses(t, 5)
    assert max(abs(a - b) for a, b in zip(curves["masked"], curves["block"], strict=True)) < 1e-4
    summaries = run_experiment([build_config({**tiny(density=0.25, topology="block", block=8, backend="block"),
                                              "name": "b"})], tmp_path, progress_bar=False)
    assert summaries[0].backend == "block"
    topo = json.loads((tmp_path / "b" / "topology.json").read_text())
    assert {r["backend"] for r in topo["layers"]} == {"block"}


def test_auto_picks_per_layer_from_shape_tokens_and_mask() -> None:
    cpu = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    er = lambda d: torch.rand(1024, 1024, generator=gen) < d  # noqa: E731
    assert explain_backend("auto", er(0.02), cpu, tokens=2048).backend == "csr"  # below every csr break-even
    assert explain_backend("auto", er(0.3), cpu, tokens=2048).backend == "masked"
    small = explain_backend("auto", er(0.02), cpu, tokens=MIN_SPARSE_WORK // (1024 * 1024) - 1)
    assert small.backend == "masked" and "overhead" in small.reason
    cfg = SparseConfig(density=0.1, topology="block", block=32)
    blocks = TOPOLOGIES["block"](1024, 1024, 0.1, keyed_generator(0, "t"), cfg)
    choice = explain_backend("auto", blocks, cpu, tokens=2048, block=32)
    assert choice.backend == "block" and str(BLOCK_BREAK_EVEN[32]) in choice.reason
    assert explain_backend("auto", blocks, cpu, tokens=2048, block=16).backend != "block"  # b=16 loses at 10%
    cfg = SparseConfig(density=0.4, topology="block", block=128)  # 128-wide tiles still win at 40%, 64-wide lose
    coarse = TOPOLOGIES["block"](1024, 1024, 0.4, keyed_generator(0, "t"), cfg)
    assert explain_backend("auto", coarse, cpu, tokens=2048, block=128).backend == "block"
    assert explain_backend("auto", coarse, cpu, tokens=2048, block=64).backend != "block"
    for name in ("masked", "csr", "block"):
        assert explain_backend(name, er(0.3), cpu).backend == name


def test_swap_moves_between_all_backends_keeping_weights() -> None:
    torch.manual_seed(0)
    model = GPT(build_config(tiny(density=0.3)).model)
    apply_sparsity(model, SparseConfig(density=0.3, topology="block", block=8), 0)
    idx = torch.arange(64).view(2, 32) % 200
    model.eval()
    with torch.no_grad():
        ref = model(idx)
    for backend in ("block", "csr", "masked", "block", "masked"):
        swap_backend(model, backend, block=8)
        with torch.no_grad():
            assert float((model(idx) - ref).abs().max()) < 1e-5, backend


def test_semi24_falls_back_to_masked_on_cpu_and_says_so(tmp_path: Path) -> None:
    data = tiny(density=0.5, topology="nm", nm_n=2, nm_m=4, backend="semi24")
    with pytest.warns(UserWarning, match="semi24 needs CUDA sm80"):
        t = _trainer(tmp_path, data, "semi")
    assert all(type(mm) is MaskableLinear for mm in t.model.maskable().values())
    topo = t._topology_report()  # what topology.json holds
    assert {r["backend"] for r in topo["layers"]} == {"masked"}
    assert all("masked fallback" in r["backend_reason"] for r in topo["layers"])


@pytest.mark.parametrize("backend", ["masked", "csr", "block"])
def test_bf16_autocast_on_cpu_trains_every_backend(backend: str) -> None:
    """csr had no bf16 CPU kernel (it failed under autocast); sparse backends now run their matmuls in fp32."""
    mask = torch.rand(32, 48, generator=torch.Generator().manual_seed(2)) < 0.3
    m = _masked(32, 48, mask, torch.float32)
    mod = {"masked": m, "csr": CSRLinear.from_masked(m), "block": BlockLinear.from_masked(m, 8)}[backend]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mod(torch.randn(4, 48))
    y.float().sum().backward()
    grad = mod.weight.grad if backend == "masked" else mod.values.grad
    assert grad is not None and grad.dtype == torch.float32 and bool(torch.isfinite(grad).all())
    if backend == "masked":
        assert float(grad[~mask].abs().max()) == 0.0
