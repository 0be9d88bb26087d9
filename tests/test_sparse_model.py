"""Masked layers: exact zeros under AdamW, equivalence with a dense model times the mask, init and counts."""

import copy

import pytest
import torch

from sparsecl.config import ModelConfig, SparseConfig, TrainConfig
from sparsecl.model.gpt import GPT
from sparsecl.model.optim import build_optimizer
from sparsecl.rng import keyed_generator
from sparsecl.sparse.apply import apply_sparsity, masked_layers, structural_counts
from sparsecl.sparse.topology import erdos_renyi, make_mask

CFG = ModelConfig(n_layer=2, n_head=2, d_model=32, block_size=16, vocab_size=64)


def sparse_model(density: float = 0.1, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    m = GPT(CFG)
    apply_sparsity(m, SparseConfig(density=density), seed)
    return m


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(64, (4, 16), generator=g), torch.randint(64, (4, 16), generator=g)


def test_mask_invariant_after_100_adamw_steps_with_weight_decay() -> None:
    m = sparse_model(0.1)
    opt = build_optimizer(m, TrainConfig(lr=1e-2, weight_decay=0.1))
    for step in range(100):
        x, y = batch(step)
        opt.zero_grad()
        m.loss(x, y).backward()
        opt.step()
    n_checked = 0
    for mod in m.maskable().values():
        off = ~mod.mask
        assert off.any()
        assert torch.count_nonzero(mod.weight[off]) == 0
        st = opt.state[mod.weight]
        assert torch.count_nonzero(st["exp_avg"][off]) == 0
        assert torch.count_nonzero(st["exp_avg_sq"][off]) == 0
        # and the kept weights did train
        assert torch.count_nonzero(st["exp_avg"][mod.mask]) > 0
        n_checked += 1
    assert n_checked == 2 * 4


def test_masked_model_equals_dense_model_with_masked_weights() -> None:
    sparse = sparse_model(0.2)
    dense = copy.deepcopy(sparse)
    with torch.no_grad():
        for mod in dense.maskable().values():
            mod.weight.mul_(mod.mask)
            mod.mask = None
    x, y = batch(1)
    ls, ld = sparse.loss(x, y), dense.loss(x, y)
    torch.testing.assert_close(sparse(x), dense(x), rtol=0, atol=0)
    ls.backward()
    ld.backward()
    for (n, ps), pd in zip(sparse.named_parameters(), dense.parameters(), strict=True):
        if n.endswith(("qkv.weight", "o.weight", "up.weight", "down.weight")):
            mask = dict(sparse.named_modules())[n.rsplit(".", 1)[0]].mask
            torch.testing.assert_close(ps.grad, pd.grad * mask, rtol=1e-6, atol=1e-7)
            assert torch.count_nonzero(ps.grad[~mask]) == 0
        else:
            torch.testing.assert_close(ps.grad, pd.grad, rtol=1e-6, atol=1e-7)


def test_init_std_follows_actual_fan_in() -> None:
    cfg = ModelConfig(n_layer=1, n_head=2, d_model=256, block_size=8, vocab_size=64)
    torch.manual_seed(0)
    m = GPT(cfg)
    apply_sparsity(m, SparseConfig(density=0.25), 0)
    up = m.blocks[0].mlp.up  # not a residual output: std = 1/sqrt(fan_in)
    w = up.weight[up.mask]
    fan_in = up.mask.sum(1).float().mean()
    assert w.std().item() == pytest.approx(1 / fan_in.sqrt().item(), rel=0.03)
    torch.manual_seed(0)
    d = GPT(cfg)
    assert d.blocks[0].mlp.up.weight.std().item() == pytest.approx(1 / 256**0.5, rel=0.03)


def test_masks_never_touch_the_global_rng_and_depend_on_seed_and_name() -> None:
    state = torch.get_rng_state()
    a = make_mask("er", 64, 48, 0.1, 3, "blocks.0.attn.q", SparseConfig(density=0.1))
    assert torch.equal(state, torch.get_rng_state())
    b = make_mask("er", 64, 48, 0.1, 3, "blocks.0.attn.q", SparseConfig(density=0.1))
    c = make_mask("er", 64, 48, 0.1, 3, "blocks.0.attn.k", SparseConfig(density=0.1))
    d = make_mask("er", 64, 48, 0.1, 4, "blocks.0.attn.q", SparseConfig(density=0.1))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)


def test_er_has_exact_count() -> None:
    m = erdos_renyi(100, 37, 0.1, keyed_generator(0, "x"), SparseConfig(density=0.1))
    assert m.shape == (100, 37) and int(m.sum()) == round(0.1 * 100 * 37)


def test_qkv_parts_get_separate_masks_and_counts_add_up() -> None:
    m = sparse_model(0.1)
    layers = masked_layers(m, SparseConfig(density=0.1))
    assert sorted(n.rsplit(".", 1)[1] for n in layers) == sorted(["q", "k", "v", "o", "up", "down"] * 2)
    total, nonzero = structural_counts(m)
    masked_total = sum((r.stop - r.start) * mod.in_features for mod, r in layers.values())
    unmasked = total - masked_total
    assert nonzero == unmasked + sum(int(mod.mask[r].sum()) for mod, r in layers.values())
    assert nonzero == pytest.approx(unmasked + 0.1 * masked_total, rel=0.01)
    qkv = m.blocks[0].attn.qkv
    q, k = qkv.mask[:32], qkv.mask[32:64]
    assert not torch.equal(q, k)
