"""Probe numerics against exact answers: Lanczos and Hutchinson vs the full Hessian of a tiny GPT, CKA,
effective rank, principal angles, LMC barrier, ReDo, interference, noise scale."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

from sparsecl.config import ModelConfig, SparseConfig, build_config
from sparsecl.model.gpt import GPT, trainable
from sparsecl.probes.context import ProbeContext, collect_features
from sparsecl.probes.geometry import interpolate_states, lmc_barrier
from sparsecl.probes.hessian import HVP, extreme_eigenvalues
from sparsecl.probes.linalg import (
    cosine,
    dormant_fraction,
    effective_rank,
    flatten,
    hutchinson,
    linear_cka,
    principal_angles_deg,
    top_left_singular,
)
from sparsecl.probes.plasticity import SeqGradStats, interference, noise_scale_from, per_sequence_stats
from sparsecl.sparse.apply import apply_sparsity

torch.set_num_threads(1)


def tiny_gpt(density: float = 1.0) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=1, n_head=2, d_model=4, d_ff=8, block_size=4, vocab_size=8)
    m = GPT(cfg)
    if density < 1.0:
        apply_sparsity(m, SparseConfig(density=density), seed=0)
    with torch.no_grad():  # larger weights than init so the Hessian is far from trivial
        for p in m.parameters():
            p.mul_(4.0)
    return m.eval()


def tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(8, (3, 4), generator=g), torch.randint(8, (3, 4), generator=g)


def exact_hessian(model: GPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Full float64 Hessian of the loss w.r.t. the flattened trainable parameters."""
    m = copy.deepcopy(model).double().eval()
    for blk in m.blocks:
        blk.attn.math_kernel = True
    names = [n for n, _ in trainable(m)]
    shapes = [p.shape for _, p in trainable(m)]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in trainable(m)])

    def f(flat: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for n, s in zip(names, shapes, strict=True):
            k = math.prod(s)
            params[n] = flat[i:i + k].view(s)
            i += k
        logits = functional_call(m, params, (x,))
        return nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))

    return torch.autograd.functional.hessian(f, flat0)


def test_lanczos_matches_exact_extreme_eigenvalues_dense() -> None:
    model = tiny_gpt()
    x, y = tiny_batch()
    H = exact_hessian(model, x, y)
    assert 150 <= H.shape[0] <= 400
    ev = torch.linalg.eigvalsh(H)
    with HVP(model, lambda m: m.loss(x, y)) as hvp:
        lo, hi, steps = extreme_eigenvalues(hvp, 60, torch.Generator().manual_seed(0))
    assert steps >= 30
    assert abs(hi - ev[-1].item()) <= 1e-3 * abs(ev[-1].item())
    assert abs(lo - ev[0].item()) <= 1e-3 * abs(ev[0].item())
    assert ev[0] < 0 < ev[-1]  # a genuinely indefinite Hessian: both ends are tested


def test_lanczos_matches_exact_on_masked_subspace_and_hvp_is_zero_outside_mask() -> None:
    model = tiny_gpt(density=0.5)
    x, y = tiny_batch()
    H = exact_hessian(model, x, y)
    with HVP(model, lambda m: m.loss(x, y)) as hvp:
        assert hvp.mask is not None and 0 < hvp.n_existing < hvp.n
        keep = hvp.mask.bool()
        ev = torch.linalg.eigvalsh(H[keep][:, keep])  # the Hessian over the weights that exist
        lo, hi, _ = extreme_eigenvalues(hvp, 60, torch.Generator().manual_seed(0))
        v = torch.randn(hvp.n, generator=torch.Generator().manual_seed(3))
        hv = hvp(v)
        assert torch.count_nonzero(hv[~keep]) == 0
        assert hv[keep].abs().max() > 1e-3  # and not trivially zero inside
        # inside the mask it is the exact Hessian restricted to the existing weights
        ref = (H[keep][:, keep] @ v[keep].double()).float()
        assert torch.allclose(hv[keep], ref, rtol=1e-3, atol=1e-4)
    assert abs(hi - ev[-1].item()) <= 1e-3 * abs(ev[-1].item())
    assert abs(lo - ev[0].item()) <= 1e-3 * abs(ev[0].item())


@pytest.mark.parametrize("density", [1.0, 0.5])
def test_hutchinson_within_three_standard_errors_of_exact_trace(density: float) -> None:
    model = tiny_gpt(density)
    x, y = tiny_batch()
    H = exact_hessian(model, x, y)
    with HVP(model, lambda m: m.loss(x, y)) as hvp:
        keep = torch.ones(hvp.n, dtype=torch.bool) if hvp.mask is None else hvp.mask.bool()
        exact = H.diagonal()[keep].sum().item()
        mean, se, est = hutchinson(hvp, hvp.n, 64, torch.Generator().manual_seed(5), hvp.mask, torch.device("cpu"),
                                   torch.float32)
    assert len(est) == 64 and se > 0
    assert abs(mean - exact) <= 3 * se
    assert se < 0.5 * abs(exact)  # the standard error is informative, not huge


def test_cka_identity_orthogonal_and_scaling_invariance() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 12, generator=g)
    Q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X, X @ Q) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(X, 7.5 * X) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(X, X + 3.0) == pytest.approx(1.0, abs=1e-10)  # columns are centred
    Y = torch.randn(300, 12, generator=g)
    assert linear_cka(X, Y) < 0.2  # independent features are far from similar


def _orthonormal_centred(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    a = torch.randn(n, k, generator=g, dtype=torch.float64)
    a = a - a.mean(0, keepdim=True)
    return torch.linalg.qr(a)[0]  # columns orthonormal and (spanned by centred columns) zero-mean


def test_effective_rank_known_spectra_raw_and_centred() -> None:
    g = torch.Generator().manual_seed(0)
    U = _orthonormal_centred(200, 4, g)
    V = torch.linalg.qr(torch.randn(16, 4, generator=g, dtype=torch.float64))[0]
    flat = U @ torch.diag(torch.tensor([2.0, 2.0, 2.0, 2.0], dtype=torch.float64)) @ V.T
    assert effective_rank(flat) == pytest.approx(4.0, rel=1e-9)
    s = torch.tensor([3.0, 1.0], dtype=torch.float64)
    two = U[:, :2] @ torch.diag(s) @ V[:, :2].T
    p = s / s.sum()
    assert effective_rank(two) == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-9)
    shifted = two + torch.arange(16, dtype=torch.float64)  # a common offset adds a direction to raw only
    assert effective_rank(shifted, centred=True) == pytest.approx(effective_rank(two), rel=1e-9)
    assert effective_rank(shifted) != pytest.approx(effective_rank(two), rel=1e-3)


def test_principal_angles_of_a_known_rotation() -> None:
    th = math.radians(30.0)
    a = torch.zeros(5, 5, dtype=torch.float64)
    a[0, 0] = 1.0
    b = torch.zeros(5, 5, dtype=torch.float64)
    b[0, 0], b[1, 0] = math.cos(th), math.sin(th)
    assert principal_angles_deg(a, b, 1).item() == pytest.approx(30.0, abs=1e-9)
    assert principal_angles_deg(a, a, 1).item() == pytest.approx(0.0, abs=1e-6)


class Quartic(nn.Module):
    """loss(w) = (w^2 - 1)^2: minima at -1 and +1, height 1 at w = 0, plus a float buffer."""

    def __init__(self, w: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([w], dtype=torch.float64))
        self.register_buffer("scale", torch.tensor([1.0], dtype=torch.float64))


def test_lmc_barrier_zero_for_identical_and_positive_for_nonconvex_pair() -> None:
    alphas = [i / 10 for i in range(11)]
    a, b = Quartic(-1.0), Quartic(1.0)

    def losses(m: nn.Module) -> dict[str, float]:
        return {"q": float(m.scale * (m.w ** 2 - 1) ** 2)}

    sa, sb = a.state_dict(), b.state_dict()
    assert lmc_barrier(a, sa, sa, losses, alphas)["q"] == 0.0
    assert lmc_barrier(a, sa, sb, losses, alphas)["q"] == pytest.approx(1.0, abs=1e-12)
    # buffers are interpolated too; boolean tensors (masks) come from the end point
    mask = torch.tensor([True, False])
    mid = interpolate_states({"w": torch.tensor(0.0), "buf": torch.tensor(0.0), "m": mask},
                             {"w": torch.tensor(2.0), "buf": torch.tensor(4.0), "m": mask}, 0.5)
    assert mid["w"].item() == 1.0 and mid["buf"].item() == 2.0 and torch.equal(mid["m"], mask)
    # on a GPT: identical endpoints give no barrier
    model = tiny_gpt()
    x, y = tiny_batch()
    st = {k: v.clone() for k, v in model.state_dict().items()}
    bar = lmc_barrier(model, st, st, lambda m: {"d": float(m.eval().loss(x, y))}, alphas)
    assert abs(bar["d"]) < 1e-6
    with pytest.raises(ValueError):
        lmc_barrier(a, sa, sb, losses, [0.0, 0.5])


def test_dormant_fraction_on_constructed_activations() -> None:
    n = 100
    sign = torch.tensor([1.0, -1.0]).repeat(n // 2)
    acts = torch.stack([torch.zeros(n), 0.05 * sign, torch.ones(n), -2.95 * torch.ones(n)], dim=1)
    # E|h| = [0, 0.05, 1, 2.95], mean 1.0 -> scores [0, 0.05, 1, 2.95]
    assert dormant_fraction(acts, 0.0) == 0.25
    assert dormant_fraction(acts, 0.025) == 0.25
    assert dormant_fraction(acts, 0.1) == 0.5


def test_dormant_probe_reads_mlp_units_after_gelu() -> None:
    model = tiny_gpt()
    with torch.no_grad():
        model.blocks[0].mlp.up.weight[:3] = 0.0  # 3 of 8 units get zero pre-activation -> GELU(0) = 0
    x, _ = tiny_batch()
    f = collect_features(model, x)
    assert f.mlp[0].shape == (3 * 3, 8)  # first position dropped: 3 sequences x 3 positions
    assert dormant_fraction(f.mlp[0], 0.0) == 3 / 8


def _ctx_with_grads(grads: dict[str, torch.Tensor]) -> ProbeContext:
    cfg = build_config({"schedule": "arith,facts,code", "model": {"n_layer": 1, "d_model": 4, "n_head": 1,
                                                                   "block_size": 4}})  # describes the run, not tiny_gpt
    ctx = ProbeContext(model=tiny_gpt(), cfg=cfg, windows={}, phase=3, step=30, current=["code"],
                       learned_phase={"arith": 1, "facts": 2, "code": 3}, states=lambda j: None,
                       device=torch.device("cpu"))
    for d, g in grads.items():
        ctx.cache[("grad", (d,))] = g
    return ctx


def test_interference_sign_on_constructed_gradients() -> None:
    v = torch.tensor([1.0, 2.0, -1.0, 0.5])
    w = torch.tensor([2.0, -1.0, 0.0, 0.0])  # orthogonal to v
    ctx = _ctx_with_grads({"code": v, "arith": -3.0 * v + 0.1 * w, "facts": 2.0 * v + w})
    out = interference(ctx)
    assert out["arith/cos"] < -0.99  # opposing gradients: a step on code raises arith's loss
    assert out["facts/cos"] == pytest.approx(cosine(v, 2.0 * v + w), abs=1e-12) and out["facts/cos"] > 0
    assert out["cos_min"] == out["arith/cos"]
    assert "code/cos" not in out


def test_noise_scale_formula_against_direct_estimates() -> None:
    g = torch.Generator().manual_seed(0)
    G = torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    gs = G + 0.5 * torch.randn(400, 3, generator=g, dtype=torch.float64)
    st = SeqGradStats()
    for row in gs:
        st.add(row)
    out = noise_scale_from(st)
    tr = torch.cov(gs.T, correction=1).trace().item()
    assert out["trace_sigma"] == pytest.approx(tr, rel=1e-10)
    assert out["g2"] == pytest.approx((gs.mean(0) @ gs.mean(0)).item() - tr / 400, rel=1e-10)
    assert out["b_simple"] == pytest.approx(3 * 0.25 / 14.0, rel=0.15)  # tr(Sigma)=0.75, |G|^2=14


def test_per_sequence_gradients_give_the_empirical_fisher() -> None:
    model = tiny_gpt()
    x, y = tiny_batch()
    st = per_sequence_stats(model, x, y, None)
    params = [p for _, p in trainable(model)]
    ref = []
    for i in range(3):
        gr = torch.autograd.grad(model.loss(x[i:i + 1], y[i:i + 1]), params, allow_unused=True)
        ref.append(flatten(list(gr), params))
    R = torch.stack(ref).double()
    assert torch.allclose(st.sum_sq / st.n, (R ** 2).mean(0), rtol=1e-6, atol=1e-12)
    mean_sq = (R.mean(0) ** 2).sum()
    assert (st.sum_sq / st.n).sum() > mean_sq  # the squared minibatch mean underestimates the Fisher


def test_model_sampled_fisher_is_deterministic_and_differs_from_empirical() -> None:
    model = tiny_gpt()
    x, y = tiny_batch()
    a = per_sequence_stats(model, x, None, torch.Generator().manual_seed(7))
    b = per_sequence_stats(model, x, None, torch.Generator().manual_seed(7))
    emp = per_sequence_stats(model, x, y, None)
    assert torch.equal(a.sum_sq, b.sum_sq)
    assert not torch.allclose(a.sum_sq, emp.sum_sq)
    assert a.sum_sq.sum() > 0


def test_update_ratio_rebuilds_the_last_adamw_step() -> None:
    from sparsecl.probes.fixedpoint import update_ratio
    from sparsecl.store.checkpoint import optimizer_tensors

    model = tiny_gpt().train()
    x, y = tiny_batch()
    cfg = build_config({"schedule": "arith", "train": {"lr": 0.01, "lr_schedule": "constant", "warmup_steps": 0,
                                                        "steps_per_phase": 2, "weight_decay": 0.1}})
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=0.01, betas=(cfg.train.beta1, cfg.train.beta2))
    for _ in range(2):
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        model.loss(x, y).backward()
        opt.step()
    names = {id(p): n for n, p in model.named_parameters()}
    ctx = ProbeContext(model=model.eval(), cfg=cfg, windows={}, phase=1, step=2, current=["arith"],
                       learned_phase={"arith": 1}, states=lambda j: None, device=torch.device("cpu"), phase_step=2,
                       optim_state=lambda: optimizer_tensors(opt, names))
    out = update_ratio(ctx)
    delta = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(model.parameters(), before, strict=True)])
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert out["total_ratio"] == pytest.approx(float(delta.norm() / theta.norm()), rel=1e-3)
    assert out["lr"] == 0.01


@pytest.mark.parametrize("shape", [(12, 30), (30, 12), (16, 16)])
def test_top_left_singular_spans_the_svd_subspace(shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.tensor([10.0, 7.0, 5.0, 3.0] + [0.5 / (i + 1) for i in range(min(shape) - 4)], dtype=torch.float64)
    u = torch.linalg.qr(torch.randn(shape[0], min(shape), generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(shape[1], min(shape), generator=g, dtype=torch.float64))[0]
    a = u @ torch.diag(s) @ v.T
    basis = top_left_singular(a, 4)
    assert basis.shape == (shape[0], 4)
    torch.testing.assert_close(basis.T @ basis, torch.eye(4, dtype=torch.float64), atol=1e-10, rtol=0)
    cos = torch.linalg.svdvals(basis.T @ u[:, :4])  # 1 where the subspaces agree
    torch.testing.assert_close(cos, torch.ones(4, dtype=torch.float64), atol=1e-10, rtol=0)


def test_factored_product_has_the_subspace_of_the_formed_product() -> None:
    g = torch.Generator().manual_seed(1)
    left, right = torch.randn(24, 4, generator=g), torch.randn(4, 24, generator=g)
    other_l, other_r = torch.randn(24, 4, generator=g), torch.randn(4, 24, generator=g)
    factored = principal_angles_deg(left, other_l, 3, right, other_r)
    formed = principal_angles_deg(left @ right, other_l @ other_r, 3)
    torch.testing.assert_close(factored, formed, atol=1e-6, rtol=0)
    assert float(principal_angles_deg(left, left, 3, right, right).max()) < 1e-5
    assert float(formed.max()) > 10.0  # unrelated circuits: the check is not vacuous
