"""sparseupdate, rigl and align: their mechanisms on constructed cases with hand-computed answers."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from methods_util import make_trainer, tiny_config

from sparsecl.errors import ConfigError
from sparsecl.methods.align import align_penalty
from sparsecl.methods.common import trainable
from sparsecl.methods.rigl import dense_gradients, drop_grow, update_fraction
from sparsecl.methods.sparseupdate import n_selected, random_selection, topk_selection
from sparsecl.model.gpt import param_masks
from sparsecl.sparse.csr import CSRLinear
from sparsecl.train.trainer import Trainer

torch.set_num_threads(1)


def _step(tr: Trainer, s: int, phase: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step exactly as the trainer's loop takes it (hooks included); returns its batch."""
    x, y = tr.batch(["arith"], "train", phase, s)
    loss = tr.method.training_loss(tr, x, y)
    tr.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    tr.method.after_backward(tr, (x, y))
    tr.optimizer.step()
    tr.method.after_step(tr, (x, y))
    tr.progress.phase_step += 1
    tr.progress.step += 1
    return x, y


def _snapshot(tr: Trainer) -> dict[str, list[torch.Tensor]]:
    st = tr.optimizer.state
    return {n: [p.detach().clone()] + [st[p][k].clone() if p in st else torch.zeros_like(p)
                                       for k in ("exp_avg", "exp_avg_sq")] for n, p in trainable(tr.model)}


def _amax(t: torch.Tensor) -> float:
    """Largest |entry|, 0 for an empty selection."""
    return float(t.abs().max()) if t.numel() else 0.0


# ---------------------------------------------------------------------------------------------- sparseupdate
def test_sparseupdate_topk_selection_by_hand() -> None:
    grad = torch.tensor([[0.1, -0.5], [0.3, 0.0]])
    exists = torch.tensor([[True, True], [False, True]])
    # 3 existing entries, k = round(0.5 * 3) = 2: |-0.5| then 0.1 (0.3 is off the mask)
    assert torch.equal(topk_selection(grad, exists, 0.5), torch.tensor([[True, True], [False, False]]))
    # dense: 4 entries, k = 2: 0.5 and 0.3
    assert torch.equal(topk_selection(grad, None, 0.5), torch.tensor([[False, True], [True, False]]))
    assert [n_selected(f, 10) for f in (0.1, 0.26, 1.0)] == [1, 3, 10]
    g = torch.Generator().manual_seed(0)
    sel = random_selection(torch.Size([4, 5]), None, 0.3, g)
    assert int(sel.sum()) == 6
    sel = random_selection(torch.Size([2, 2]), exists, 1.0, g)
    assert torch.equal(sel, exists)


@pytest.mark.parametrize("select", ["topk", "random"])
def test_sparseupdate_leaves_non_selected_weights_and_moments_bit_identical(tmp_path: Path, select: str) -> None:
    """Under AdamW with weight decay 0.1: each step exactly round(f n) entries of every tensor move and every
    other entry keeps its weight and both moments bit for bit; 'random' keeps one subset for the phase."""
    cfg = tiny_config("sparseupdate", {"fraction": 0.2, "select": select}, density=0.5)
    tr = make_trainer(cfg, tmp_path / "r")
    tr.optimizer = tr.make_optimizer()
    assert tr.optimizer.param_groups[0]["weight_decay"] == 0.1
    masks = param_masks(tr.model)
    start = _snapshot(tr)
    union: dict[str, torch.Tensor] = {}
    prev: dict[str, torch.Tensor] = {}
    for s in range(4):
        before = _snapshot(tr)
        x, y = tr.batch(["arith"], "train", 1, s)
        loss = tr.method.training_loss(tr, x, y)
        tr.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        tr.method.after_backward(tr, (x, y))
        sel = {n: tr.method.selected[id(p)].clone() for n, p in trainable(tr.model)}
        tr.optimizer.step()
        tr.method.after_step(tr, (x, y))
        tr.progress.phase_step += 1
        after = _snapshot(tr)
        for n, p in trainable(tr.model):
            exists = masks.get(id(p))
            n_exist = p.numel() if exists is None else int(exists.sum())
            assert int(sel[n].sum()) == round(0.2 * n_exist), n  # the selected fraction, exactly
            if exists is not None:
                assert not bool((sel[n] & ~exists).any()), n
            for a, b in zip(before[n], after[n], strict=True):
                assert torch.equal(a[~sel[n]], b[~sel[n]]), n  # weight, exp_avg, exp_avg_sq untouched
            moved = (after[n][0] != before[n][0])
            assert bool((moved <= sel[n]).all()), n
            union[n] = union.get(n, torch.zeros_like(sel[n])) | sel[n]
        if select == "random" and prev:
            assert all(torch.equal(sel[n], prev[n]) for n in sel)  # one subset for the whole phase
        prev = sel
    # over the steps: everything never selected is exactly where it started, moments still zero
    for n, _ in trainable(tr.model):
        never = ~union[n]
        assert torch.equal(start[n][0][never], after[n][0][never]), n
        assert _amax(after[n][1][never]) == 0.0, n
    w = dict(trainable(tr.model))["blocks.0.mlp.up.weight"]
    assert int((w.detach() != start["blocks.0.mlp.up.weight"][0]).sum()) > 0  # selected entries did train


def test_sparseupdate_random_subset_is_keyed_by_phase_and_name(tmp_path: Path) -> None:
    cfg = tiny_config("sparseupdate", {"fraction": 0.5, "select": "random"})
    tr = make_trainer(cfg, tmp_path / "r")
    m = tr.method
    m._random(tr, 1)
    one = {n: t.clone() for n, t in m.fixed.items()}
    m._random(tr, 1)
    assert all(torch.equal(one[n], m.fixed[n]) for n in one)
    m._random(tr, 2)
    assert not torch.equal(one["blocks.0.mlp.up.weight"], m.fixed["blocks.0.mlp.up.weight"])
    assert not torch.equal(one["blocks.0.mlp.up.weight"].flatten()[:64], one["blocks.1.mlp.up.weight"].flatten()[:64])


def test_sparseupdate_params_are_validated() -> None:
    with pytest.raises(ConfigError, match="method.params.fraction"):
        tiny_config("sparseupdate", {"fraction": 0.0})
    with pytest.raises(ConfigError, match="method.params.select"):
        tiny_config("sparseupdate", {"select": "all"})


# ---------------------------------------------------------------------------------------------- rigl
def test_rigl_cosine_fraction_by_hand() -> None:
    assert update_fraction(0, 100, 0.3) == pytest.approx(0.3)
    assert update_fraction(25, 100, 0.3) == pytest.approx(0.15 * (1 + math.sqrt(0.5)))  # 0.256066
    assert update_fraction(50, 100, 0.3) == pytest.approx(0.15)
    assert update_fraction(75, 100, 0.3) == pytest.approx(0.15 * (1 - math.sqrt(0.5)))  # 0.043934
    assert update_fraction(100, 100, 0.3) == 0.0 and update_fraction(150, 100, 0.3) == 0.0


def test_rigl_drop_grow_picks_by_hand() -> None:
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    w = torch.tensor([[0.5, -0.1, 0.0], [0.0, 0.2, -0.9]])
    g = torch.tensor([[0.0, 0.0, 0.7], [0.4, 0.05, 0.0]])
    # drop the two smallest kept |w| (0.1, 0.2); grow the two largest |g| among the absent: 0.7, 0.4
    assert torch.equal(drop_grow(mask, w, g, 2), torch.tensor([[1, 0, 1], [1, 0, 1]], dtype=torch.bool))
    # a just-dropped connection with the largest gradient is grown back (the mask does not change)
    g2 = torch.tensor([[0.0, 1.0, 0.7], [0.4, 0.05, 0.0]])
    assert torch.equal(drop_grow(mask, w, g2, 1), mask)
    assert torch.equal(drop_grow(mask, w, g, 0), mask)


def test_rigl_dense_gradient_matches_autograd_of_the_unmasked_model(tmp_path: Path) -> None:
    cfg = tiny_config("rigl", {"interval": 1}, density=0.3)
    tr = make_trainer(cfg, tmp_path / "r")
    x, y = tr.batch(["arith"], "t", 0)
    mods = {n: m for n, m in tr.model.maskable().items()}
    grads = dense_gradients(tr.model, list(mods.values()), x, y)
    dense = copy.deepcopy(tr.model)
    for m in dense.maskable().values():
        m.mask = None  # the same function: weights off the mask are stored as zeros
    dense.loss(x, y).backward()
    for n, m in dense.maskable().items():
        torch.testing.assert_close(grads[id(mods[n])], m.weight.grad, rtol=1e-4, atol=1e-6)
        assert float(m.weight.grad[~mods[n].mask].abs().max()) > 0  # the gradient exists where the mask is 0
    assert all(p.grad is None for p in tr.model.parameters())  # the probe leaves the model's grads alone


def _rigl_trainer(tmp_path: Path, backend: str) -> Trainer:
    cfg = tiny_config("rigl", {"interval": 1, "alpha": 0.3, "end": 1.0}, density=0.3, steps=4,
                      sparse={"density": 0.3, "backend": backend})
    tr = make_trainer(cfg, tmp_path / backend)
    tr.optimizer = tr.make_optimizer()
    tr.method.begin_phase(tr, 1)
    return tr


def _dense_moments(tr: Trainer, mod: torch.nn.Module) -> list[torch.Tensor]:
    """exp_avg and exp_avg_sq of a layer as dense (out, in) tensors (zeros before the first step)."""
    csr = isinstance(mod, CSRLinear)
    st = tr.optimizer.state.get(mod.values if csr else mod.weight, {})
    out = []
    for k in ("exp_avg", "exp_avg_sq"):
        t = st.get(k)
        if t is None:
            out.append(torch.zeros(mod.mask.shape))
        else:
            out.append(torch.zeros(mod.mask.shape).masked_scatter(mod.mask, t) if csr else t)
    return out


def test_rigl_update_keeps_counts_and_invariant_and_both_backends_agree(tmp_path: Path) -> None:
    trs = {b: _rigl_trainer(tmp_path, b) for b in ("masked", "csr")}
    start = {n: m.mask.clone() for n, m in trs["masked"].model.maskable().items()}
    for s in range(3):  # fractions 0.3/2 (1 + cos(pi t / 4)) at t = 1, 2, 3
        prev = {b: {n: (m.mask.clone(), [t.clone() for t in _dense_moments(tr, m)])
                    for n, m in tr.model.maskable().items()} for b, tr in trs.items()}
        for tr in trs.values():
            _step(tr, s)
        for b, tr in trs.items():
            for n, m in tr.model.maskable().items():
                old, old_moments = prev[b][n]
                new = m.mask.clone()
                for _, rows in m.part_rows():  # every layer (q, k, v apart) keeps its number of connections
                    assert int(new[rows].sum()) == int(old[rows].sum()), (b, n)
                w = m.dense_weight().detach()
                assert float(w[~new].abs().max()) == 0.0, (b, n)
                grown = new & ~old
                assert _amax(w[grown]) == 0.0, (b, n)  # regrown weights start at 0
                for t in _dense_moments(tr, m):
                    assert float(t[~new].abs().max()) == 0.0, (b, n)
                    assert _amax(t[grown]) == 0.0, (b, n)  # fresh zero moments
                if isinstance(m, CSRLinear):
                    assert m.values.numel() == int(new.sum()) == m.nnz
    for b, tr in trs.items():
        moved = sum(int((m.mask & ~start[n]).sum()) for n, m in tr.model.maskable().items())
        assert moved > 0, b
        row = tr.method.churn[-1]
        assert row["phase"] == 1 and row["updates"] == 3
        assert row["net_churn"] == pytest.approx(moved / sum(int(m.sum()) for m in start.values()), abs=1e-6)


@pytest.mark.parametrize("backend", ["masked", "csr"])
def test_rigl_update_carries_surviving_weights_and_moments_exactly(tmp_path: Path, backend: str) -> None:
    """One update: kept-and-kept entries keep weight and both moments bit for bit (csr: re-ordered to the
    new mask), everything else (dropped, grown, regrown) is 0; the optimizer and ``values`` are not replaced."""
    tr = _rigl_trainer(tmp_path, backend)
    tr.method.params.interval = 1000  # a plain step first, so that the moments are nonzero
    batch = _step(tr, 0)
    params = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    mods = tr.model.maskable()
    before = {n: (m.mask.clone(), m.dense_weight().detach().clone(), [t.clone() for t in _dense_moments(tr, m)])
              for n, m in mods.items()}
    opt = tr.optimizer
    moved = tr.method.update(tr, 0.3, batch)
    assert moved > 0 and tr.optimizer is opt
    assert {id(p) for g in tr.optimizer.param_groups for p in g["params"]} == params
    for n, m in mods.items():
        old, w, moments = before[n]
        keep = old & m.mask
        assert torch.equal(m.dense_weight().detach(), w * keep), n
        for was, now in zip(moments, _dense_moments(tr, m), strict=True):
            assert torch.equal(now, was * keep), n
        for part, rows in m.part_rows():
            k = round(0.3 * int(old[rows].sum()))
            assert int((old[rows] & ~m.mask[rows]).sum()) <= k, (n, part)  # at most k dropped per layer
            assert int(m.mask[rows].sum()) == int(old[rows].sum()), (n, part)


def test_rigl_first_update_makes_the_same_picks_on_both_backends(tmp_path: Path) -> None:
    """From the same start, one step and one update: masked and csr choose the same connections (later updates
    may part on near-ties, since the two backends' float sums differ in the last bits)."""
    trs = {b: _rigl_trainer(tmp_path, b) for b in ("masked", "csr")}
    for tr in trs.values():
        tr.method.params.interval = 1000
        batch = _step(tr, 0)
        assert tr.method.update(tr, 0.3, batch) > 0
    a, c = trs["masked"].model.maskable(), trs["csr"].model.maskable()
    for n in a:
        assert torch.equal(a[n].mask, c[n].mask), n
        torch.testing.assert_close(a[n].dense_weight(), c[n].dense_weight(), rtol=0, atol=1e-5)


def test_rigl_is_rejected_on_dense_models() -> None:
    with pytest.raises(ConfigError, match="'sparse.density'"):
        tiny_config("rigl", {}, density=1.0)
    with pytest.raises(ConfigError, match="method.params.alpha"):
        tiny_config("rigl", {"alpha": 1.5}, density=0.3)


# ---------------------------------------------------------------------------------------------- align
def test_align_penalty_by_hand() -> None:
    h1 = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 2, 2)
    h2 = torch.full((1, 2, 2), 2.0)
    zero = torch.zeros(1, 2, 2)
    # layer 1: mean(1, 4, 9, 16) = 7.5; layer 2: mean of 2^2 = 4; weights 2 and 0.5 -> 15 + 2 = 17
    assert float(align_penalty([h1, h2], [zero, zero], [2.0, 0.5])) == pytest.approx(17.0)
    assert float(align_penalty([h1, h2], [h1, h2], [2.0, 0.5])) == 0.0


def test_align_loss_is_ce_at_the_teacher_and_grows_away_from_it(tmp_path: Path) -> None:
    cfg = tiny_config("align", {"lam": 3.0, "layers": [1.0, 0.5]})
    tr = make_trainer(cfg, tmp_path / "r")
    x, y = tr.batch(["arith"], "t", 0)
    tr.model.eval()
    assert torch.equal(tr.method.training_loss(tr, x, y), tr.model.loss(x, y))  # no teacher yet: plain CE
    tr.method.end_phase(tr, 1)
    torch.testing.assert_close(tr.method.training_loss(tr, x, y), tr.model.loss(x, y), rtol=0, atol=1e-6)
    with torch.no_grad():
        for p in tr.model.blocks[1].parameters():
            p.add_(0.05)
    hs, prev = tr.model.hidden_states(x), tr.method.teacher.hidden_states(x)
    want = tr.model.loss(x, y) + 3.0 * (((hs[1] - prev[1]) ** 2).mean() + 0.5 * ((hs[2] - prev[2]) ** 2).mean())
    assert float((hs[1] - prev[1]).detach().abs().max()) == 0.0  # block 0 did not move, block 1 did
    got = tr.method.training_loss(tr, x, y)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    got.backward()
    assert all(p.grad is None for p in tr.method.teacher.parameters())


def test_align_layer_weights_are_validated() -> None:
    with pytest.raises(ConfigError, match="method.params.layers"):
        tiny_config("align", {"layers": [1.0, 1.0, 1.0]})  # 2 blocks
    with pytest.raises(ConfigError, match="method.params.lam"):
        tiny_config("align", {"lam": -1.0})
