"""The csr backend against the masked one: values, gradients, training curves, checkpoints, invariants."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from sparsecl.config import build_config
from sparsecl.data.domains import load_domains
from sparsecl.model.gpt import GPT, MaskableLinear
from sparsecl.sparse.apply import apply_sparsity, structural_counts
from sparsecl.sparse.csr import CSRLinear, _CSRMatmul
from sparsecl.sparse.topology import TOPOLOGIES
from sparsecl.store.index import Index
from sparsecl.train.runner import run_experiment
from sparsecl.train.trainer import Trainer

torch.set_num_threads(1)

TINY = {"schedule": "arith,code", "threads": 1, "device": "cpu",
        "model": {"n_layer": 2, "d_model": 32, "n_head": 4, "block_size": 32},
        "train": {"steps_per_phase": 10, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2},
        "eval": {"every": 0, "batches": 1, "batch_size": 4}}


def tiny(**sparse: object) -> dict:
    d = copy.deepcopy(TINY)
    d["sparse"] = dict(sparse)
    return d


def _pair(dtype: torch.dtype, density: float = 0.15) -> tuple[MaskableLinear, CSRLinear]:
    torch.manual_seed(0)
    m = MaskableLinear(40, 3 * 24, True, ["q", "k", "v"]).to(dtype)
    torch.nn.init.normal_(m.weight)
    torch.nn.init.normal_(m.bias)
    m.mask = torch.rand(72, 40) < density
    m.mask[24:48] = torch.rand(24, 40) < 0.5  # fused parts with different masks
    with torch.no_grad():
        m.weight.mul_(m.mask)
    return m, CSRLinear.from_masked(m)


def assert_csr_matches_masked(m: MaskableLinear, c: CSRLinear) -> None:
    """Outputs and gradients (input, kept weights, bias) agree within 1e-5 relative in fp32, 1e-12 in fp64."""
    dtype, device = m.weight.dtype, m.weight.device
    x = torch.randn(3, 7, 40, dtype=dtype, device=device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, y2 = m(x), c(x2)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (y2 * g).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-12

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).detach().norm() / b.detach().norm())

    assert rel(y2, y) < tol
    assert rel(x2.grad, x.grad) < tol
    assert rel(c.values.grad, m.weight.grad[m.mask]) < tol
    assert rel(c.bias.grad, m.bias.grad) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_csr_forward_and_gradients_match_masked(dtype: torch.dtype) -> None:
    m, c = _pair(dtype)
    assert_csr_matches_masked(m, c)
    assert torch.equal(c.dense_weight(), m.dense_weight())
    assert torch.equal(c.weight, m.weight * m.mask)


@pytest.mark.parametrize("edit", [
    lambda w: w.mul_(0.0), lambda w: w.zero_(), lambda w: w.__setitem__(0, 1.0), lambda w: w.add_(1.0),
    lambda w: torch.nn.init.zeros_(w), lambda w: w.copy_(torch.zeros_like(w)), lambda w: w.masked_fill_(w != 0, 2.0),
])
def test_csr_weight_and_mask_refuse_in_place_edits(edit) -> None:
    """An in-place edit of the computed dense weight (or mask) would change a temporary: it must raise."""
    _, c = _pair(torch.float32)
    before = c.values.detach().clone()
    for t in (c.weight, c.mask):
        with torch.no_grad(), pytest.raises(RuntimeError, match="set_weight"):
            edit(t)
    with torch.no_grad(), pytest.raises(RuntimeError, match="set_weight"):
        w = c.weight
        w += 1.0
    assert torch.equal(c.values.detach(), before)
    # reading still works, also as the source of an in-place op on another tensor, and gives plain tensors
    with torch.no_grad():
        dst = torch.empty(c.weight.shape).copy_(c.weight)
        dst.masked_fill_(c.mask, 0.0)
    assert float(dst.abs().max()) == 0.0
    with pytest.raises(RuntimeError, match="set_weight"):
        torch.mul(c.weight, 2.0, out=c.weight)
    # autograd flows to the values
    assert type(c.weight * 2) is torch.Tensor and type(c.mask.clone()) is torch.Tensor
    (c.weight ** 2).sum().backward()
    assert torch.allclose(c.values.grad, 2 * c.values.detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_set_weight_and_mask_agree_across_backends(dtype: torch.dtype) -> None:
    """set_weight(w, new_mask) on both backends: same dense weight (w on the new mask, exact zeros off it),
    same outputs and gradients; the csr index follows the new mask, whose nonzero count differs here."""
    m, c = _pair(dtype)
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(72, 40, generator=gen, dtype=dtype)
    new_mask = torch.rand(72, 40, generator=gen) < 0.4
    old_values = c.values
    m.set_weight(w, new_mask)
    c.set_weight(w, new_mask)
    expected = w * new_mask
    assert torch.equal(m.weight.detach(), expected) and torch.equal(m.mask, new_mask)
    assert torch.equal(c.dense_weight().detach(), expected) and torch.equal(c.mask, new_mask)
    assert c.nnz == int(new_mask.sum()) == c.values.numel() and c.values is not old_values
    assert_csr_matches_masked(m, c)
    # assigning a csr layer's mask keeps the values that stay and drops the rest
    mask2 = new_mask.clone()
    mask2[:, :20] = False
    same = c.values
    c.mask = mask2
    assert torch.equal(c.dense_weight().detach(), expected * mask2) and c.nnz == int(mask2.sum())
    assert c.values is not same  # fewer connections: a new parameter (the optimizer must be rebuilt)
    c.set_weight(2 * w)  # values only: the mask and the parameter object stay
    kept = c.values
    c.set_weight(3 * w)
    assert c.values is kept and torch.equal(c.dense_weight().detach(), 3 * w * mask2)
    with pytest.raises(ValueError, match="mask shape"):
        c.set_weight(w, torch.ones(3, 3, dtype=torch.bool))


def test_csr_gradcheck_float64() -> None:
    _, c = _pair(torch.float64, density=0.3)
    x = torch.randn(5, 40, dtype=torch.float64, requires_grad=True)
    v = c.values.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: _CSRMatmul.apply(a, b, c), (x, v))


def _trainer(tmp: Path, data: dict, name: str = "run") -> Trainer:
    cfg = build_config({**data, "name": name})
    doms = load_domains(cfg.data, cfg.model.block_size)
    return Trainer(cfg, doms, tmp / name, Index(tmp / "index.sqlite"), name, progress_bar=False)


def _train_losses(t: Trainer, steps: int) -> list[float]:
    t.optimizer = t.make_optimizer()
    losses = []
    for s in range(steps):
        x, y = t.batch(["arith"], "train", 1, s)
        loss = t.model.loss(x, y)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), 1.0)
        t.optimizer.step()
        losses.append(loss.item())
    return losses


def test_csr_run_follows_masked_loss_curve(tmp_path: Path) -> None:
    masked = _trainer(tmp_path, tiny(density=0.1, backend="masked"), "masked")
    csr = _trainer(tmp_path, tiny(density=0.1, backend="csr"), "csr")
    assert any(isinstance(m, CSRLinear) for m in csr.model.modules())
    assert not any(isinstance(m, CSRLinear) for m in masked.model.modules())
    assert structural_counts(csr.model) == structural_counts(masked.model)
    a, b = _train_losses(masked, 20), _train_losses(csr, 20)
    assert a[0] > a[-1] + 0.3  # it learns
    assert max(abs(p - q) for p, q in zip(a, b, strict=True)) < 1e-4
    for (n1, m1), (n2, m2) in zip(masked.model.maskable().items(), csr.model.maskable().items(), strict=True):
        assert n1 == n2
        assert torch.allclose(m1.dense_weight(), m2.dense_weight(), atol=1e-5)


@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
@pytest.mark.parametrize("backend", ["masked", "csr"])
def test_mask_invariant_after_adamw_steps(tmp_path: Path, topology: str, backend: str) -> None:
    density = 0.5 if topology == "nm" else 0.2
    data = tiny(density=density, topology=topology, backend=backend, block=4)
    data["train"]["weight_decay"] = 0.5
    t = _trainer(tmp_path, data)
    _train_losses(t, 4)
    for mod in t.model.maskable().values():
        assert mod.mask is not None
        w = mod.dense_weight()
        assert bool((w[~mod.mask] == 0).all())
        if backend == "masked":
            assert bool((mod.weight[~mod.mask] == 0).all())
            st = t.optimizer.state[mod.weight]
            assert bool((st["exp_avg"][~mod.mask] == 0).all()) and bool((st["exp_avg_sq"][~mod.mask] == 0).all())
        else:
            assert mod.values.numel() == int(mod.mask.sum())  # nothing off the mask exists
            assert any(mod.values is p for g in t.optimizer.param_groups if g["weight_decay"] > 0
                       for p in g["params"])


def test_auto_backend_keeps_tiny_layers_masked_and_says_why(tmp_path: Path) -> None:
    """Tiny layers (tokens x out x in far below MIN_SPARSE_WORK) stay masked under auto at any density, where a
    sparse kernel's per-call cost would make them slower; topology.json records the reason per layer."""
    for density in (0.05, 0.3):
        t = _trainer(tmp_path, tiny(density=density, backend="auto"), f"d{density}")
        assert not any(isinstance(m, CSRLinear) for m in t.model.maskable().values())
        topo = t._topology_report()  # what topology.json holds
        assert {r["backend"] for r in topo["layers"]} == {"masked"}
        assert all("overhead dominates" in r["backend_reason"] for r in topo["layers"])


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    idx = torch.arange(64).view(2, 32) % 256
    model.eval()
    with torch.no_grad():
        return model(idx)


@pytest.mark.parametrize("src,dst", [("masked", "csr"), ("csr", "masked")])
def test_checkpoint_loads_into_the_other_backend(tmp_path: Path, src: str, dst: str) -> None:
    summaries = run_experiment([build_config({**tiny(density=0.1, backend=src), "name": "a"})], tmp_path,
                               progress_bar=False)
    assert summaries[0].backend == src
    trained = _trainer(tmp_path / "fresh", tiny(density=0.1, backend=src), "a")
    trained.ckpt_dir = tmp_path / "a" / "ckpt"
    assert trained.restore()
    other = _trainer(tmp_path / "fresh", tiny(density=0.1, backend=dst), "b")
    other.ckpt_dir = tmp_path / "a" / "ckpt"
    assert other.restore()
    for (n, m1), m2 in zip(trained.model.maskable().items(), other.model.maskable().values(), strict=True):
        assert torch.equal(m1.dense_weight(), m2.dense_weight()), n
        assert torch.equal(m1.mask, m2.mask)
        p1 = m1.values if src == "csr" else m1.weight
        p2 = m2.values if dst == "csr" else m2.weight
        s1, s2 = trained.optimizer.state[p1], other.optimizer.state[p2]
        for k in ("exp_avg", "exp_avg_sq"):
            a = s1[k] if src == "csr" else s1[k][m1.mask]
            b = s2[k] if dst == "csr" else s2[k][m2.mask]
            assert torch.equal(a, b)
            if dst == "masked":
                assert bool((s2[k][~m2.mask] == 0).all())
        assert float(s1["step"]) == float(s2["step"]) == 10.0
    assert torch.allclose(_outputs(trained.model), _outputs(other.model), rtol=1e-5, atol=1e-5)
    # back into the source backend: bit-identical outputs
    again = _trainer(tmp_path / "fresh", tiny(density=0.1, backend=src), "c")
    again.model.load_state_dict(other.model.state_dict())
    assert torch.equal(_outputs(again.model), _outputs(trained.model))


def test_run_saves_topology_report(tmp_path: Path) -> None:
    import json

    run_experiment([build_config({**tiny(density=0.1, topology="expander", expander_degree="exact", backend="csr"),
                                  "name": "t"})], tmp_path, progress_bar=False)
    rep = json.loads((tmp_path / "t" / "topology.json").read_text())
    assert rep["topology"] == "expander" and len(rep["layers"]) == 2 * 6
    q = rep["layers"][0]
    assert q["name"] == "blocks.0.attn.qkv.q" and q["shape"] == [32, 32]
    assert q["row_degree"]["min"] == q["row_degree"]["max"] == 3  # 32x32 at 10% -> d = round(3.2)
    assert q["dead_rows"] == 0 and 0 < q["spectral_gap"] < 1
    assert {r["backend"] for r in rep["layers"]} == {"csr"}
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["dense_reference_params"] == GPT(build_config(TINY).model).param_count()


def test_gpt_model_has_no_csr_dependency() -> None:
    model = GPT(build_config(TINY).model)
    infos = apply_sparsity(model, build_config(tiny(density=0.1, backend="csr")).sparse, 0)
    assert len(infos) == 12 and all(isinstance(m, CSRLinear) for m in model.maskable().values())


def test_optimizer_holds_the_swapped_parameters(tmp_path: Path) -> None:
    t = _trainer(tmp_path, tiny(density=0.1, backend="csr"))
    opt = t.make_optimizer()
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for p in t.model.parameters()}
    assert not any(isinstance(m, MaskableLinear) and not isinstance(m, CSRLinear) and m.mask is not None
                   for m in t.model.modules())  # no masked layer left behind holding a dense weight


def test_deepcopy_keeps_csr_values_decayed(tmp_path: Path) -> None:
    t = _trainer(tmp_path, tiny(density=0.1, backend="csr"))
    original = t.model
    clone = copy.deepcopy(original)
    t.model = clone
    opt = t.make_optimizer()
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    values = [m.values for m in clone.modules() if isinstance(m, CSRLinear)]
    assert values and all(id(v) in decayed for v in values)
    x = torch.arange(32).view(1, 32)
    assert clone is not original and torch.equal(clone(x), original(x))


def test_double_backward_matches_masked(tmp_path: Path) -> None:
    from sparsecl.sparse.backends import swap_backend

    _, c = _pair(torch.float64, density=0.3)
    x = torch.randn(4, 40, dtype=torch.float64, requires_grad=True)
    v = c.values.detach().clone().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a, b: _CSRMatmul.apply(a, b, c), (x, v))
    data = tiny(density=0.1, backend="csr")
    data["model"]["attn_backend"] = "math"  # the fused attention kernel has no double backward
    t = _trainer(tmp_path, data)
    masked = copy.deepcopy(t.model)
    assert set(swap_backend(masked, "masked").values()) == {"masked"}
    xs = torch.arange(32).view(1, 32)

    def hvp(model: torch.nn.Module) -> list[torch.Tensor]:
        params = list(model.parameters())
        grads = torch.autograd.grad(model.loss(xs, xs), params, create_graph=True)
        return list(torch.autograd.grad(sum((g * g).sum() for g in grads), params))

    h_csr = {n: h for (n, _), h in zip(t.model.named_parameters(), hvp(t.model), strict=True)}
    h_masked = {n: h for (n, _), h in zip(masked.named_parameters(), hvp(masked), strict=True)}
    for name, mod in t.model.maskable().items():
        a, b = h_csr[f"{name}.values"], h_masked[f"{name}.weight"][mod.mask]
        assert float((a - b).norm() / b.norm()) < 1e-4, name
    a, b = h_csr["wte.weight"], h_masked["wte.weight"]
    assert float((a - b).norm() / b.norm()) < 1e-4
