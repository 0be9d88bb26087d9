"""Each method's mechanism, checked on a toy where the right answer is known."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from methods_util import make_trainer, tiny_config
from scipy import stats

from sparsecl.methods import build_method
from sparsecl.methods.agem import project
from sparsecl.methods.buffer import ReservoirBuffer
from sparsecl.methods.ewc import per_sequence_fisher
from sparsecl.methods.expand import insert_positions
from sparsecl.methods.genreplay import sample_sequences
from sparsecl.methods.lwf import distill_loss
from sparsecl.methods.sam import perturbation
from sparsecl.methods.si import SI
from sparsecl.methods.simreplay import similarity_weights
from sparsecl.model.gpt import Block, param_masks

torch.set_num_threads(1)


def test_reservoir_is_uniform_over_the_stream() -> None:
    n, cap, trials = 40, 10, 3000
    counts = torch.zeros(n)
    stream = torch.arange(n).view(n, 1).repeat(1, 3)  # row i holds token i
    for t in range(trials):
        buf = ReservoirBuffer(cap, 3, 256)
        gen = torch.Generator().manual_seed(t)
        for start in range(0, n, 7):  # offered in uneven chunks, as training steps do
            buf.add(stream[start:start + 7], 0, gen)
        assert buf.size == cap and buf.seen == n
        counts += torch.bincount(buf.tokens[:, 0].long(), minlength=n).float()
    expected = trials * cap / n
    chi2, p = stats.chisquare(counts.numpy(), [expected] * n)
    assert p > 1e-3, (chi2, p)
    assert int(counts.sum()) == trials * cap


def test_ewc_penalty_zero_at_anchor_and_gradient_points_back(tmp_path) -> None:
    tr = make_trainer(tiny_config("ewc", {"lam": 10.0, "fisher_samples": 6}), tmp_path / "r")
    tr.current_domains = ["arith"]
    m = tr.method
    m.end_phase(tr, 1)
    assert m.summary_info()["fisher_labels"] == "empirical"
    pen = m.penalty(tr.model)
    assert pen is not None and float(pen.detach()) == 0.0
    gen = torch.Generator().manual_seed(0)
    deltas = {}
    with torch.no_grad():
        for n, p in tr.model.named_parameters():
            deltas[n] = 0.01 * torch.randn(p.shape, generator=gen)
            p.add_(deltas[n])
    pen = m.penalty(tr.model)
    assert float(pen.detach()) > 0
    tr.model.zero_grad()
    pen.backward()
    dot = 0.0
    for n, p in tr.model.named_parameters():
        assert torch.allclose(p.grad, 10.0 * m.fisher[n] * deltas[n], rtol=1e-4, atol=1e-10)
        dot += float((p.grad * deltas[n]).sum())
    assert dot > 0  # a descent step (-grad) moves every weight back toward the anchor


def test_ewc_fisher_is_per_sequence_and_exceeds_batch_mean_square(tmp_path) -> None:
    tr = make_trainer(tiny_config("ewc"), tmp_path / "r")
    x, y = tr.batch(["arith"], "t", 0)
    params = list(tr.model.named_parameters())
    fisher = per_sequence_fisher(tr.model, x, y, params)
    manual = {n: torch.zeros_like(p) for n, p in params}
    for i in range(len(x)):
        tr.model.zero_grad()
        tr.model.loss(x[i:i + 1], y[i:i + 1]).backward()
        for n, p in params:
            manual[n] += p.grad ** 2 / len(x)
    tr.model.zero_grad()
    tr.model.loss(x, y).backward()
    batch_sq = sum(float((p.grad ** 2).sum()) for _, p in params)
    for n, _ in params:
        assert torch.allclose(fisher[n], manual[n], rtol=1e-5, atol=1e-12)
    assert sum(float(f.sum()) for f in fisher.values()) > 2 * batch_sq


def test_ewc_sampled_labels_recorded(tmp_path) -> None:
    tr = make_trainer(tiny_config("ewc", {"labels": "sampled", "fisher_samples": 4}), tmp_path / "r")
    tr.current_domains = ["arith"]
    tr.method.end_phase(tr, 1)
    assert tr.method.summary_info()["fisher_labels"] == "sampled"
    assert all(float(f.sum()) >= 0 for f in tr.method.fisher.values())


class Quadratic(torch.nn.Module):
    """loss = 0.5 * sum a_i theta_i^2, the SI toy."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        self.a = torch.tensor([1.0, 3.0])

    def loss(self, x: object, y: object) -> torch.Tensor:
        return 0.5 * (self.a * self.theta ** 2).sum()


def _si_steps(si: SI, tr: SimpleNamespace, opt: torch.optim.Optimizer, n: int) -> None:
    for _ in range(n):
        loss = si.training_loss(tr, None, None)
        opt.zero_grad()
        loss.backward()
        si.after_backward(tr, None)
        opt.step()
        si.after_step(tr, None)


def test_si_path_integral_on_quadratic_by_hand() -> None:
    model = Quadratic()
    tr = SimpleNamespace(model=model)
    si = build_method("si", {"c": 0.5, "xi": 1e-3})
    assert isinstance(si, SI)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    si.begin_phase(tr, 1)
    _si_steps(si, tr, opt, 2)
    # theta_{t+1} = theta_t (1 - 0.1 a); g_t = a theta_t; -g * dtheta = 0.1 a^2 theta_t^2.
    # coord 1 (a=1): theta 1 -> 0.9 -> 0.81, omega = 0.1 * (1 + 0.81) = 0.181
    # coord 2 (a=3): theta -2 -> -1.4 -> -0.98, omega = 0.9 * (4 + 1.96) = 5.364
    assert torch.allclose(si.omega["theta"], torch.tensor([0.181, 5.364]), atol=1e-5)
    si.end_phase(tr, 1)
    # Omega = omega / (dtheta^2 + xi): 0.181 / (0.19^2 + 0.001) and 5.364 / (1.02^2 + 0.001)
    expected = torch.tensor([0.181 / 0.0371, 5.364 / 1.0414])
    assert torch.allclose(si.importance["theta"], expected, rtol=1e-5)
    assert torch.allclose(si.anchor["theta"], torch.tensor([0.81, -0.98]), atol=1e-6)
    # phase 2: the penalty's own gradient must not enter the path integral
    si.begin_phase(tr, 2)
    with torch.no_grad():
        model.theta.copy_(torch.tensor([0.5, 0.5]))
    before = model.theta.detach().clone()
    _si_steps(si, tr, opt, 1)
    task_grad = model.a * before
    delta = model.theta.detach() - before
    assert torch.allclose(si.omega["theta"], -task_grad * delta, atol=1e-7)


def test_agem_projection_never_conflicts_with_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    projected = 0
    for _ in range(200):
        g = [torch.randn(5, 3, generator=gen), torch.randn(4, generator=gen)]
        r = [torch.randn(5, 3, generator=gen), torch.randn(4, generator=gen)]
        dot0 = sum(float((a * b).sum()) for a, b in zip(g, r, strict=True))
        out, did = project(g, r)
        dot = sum(float((a * b).sum()) for a, b in zip(out, r, strict=True))
        assert did == (dot0 < 0)
        assert dot >= -1e-5
        if did:
            projected += 1
            assert abs(dot) < 1e-4  # projected onto the plane orthogonal to g_ref
        else:
            assert all(torch.equal(a, b) for a, b in zip(out, g, strict=True))
    assert 50 < projected < 150


def test_agem_in_training_projects_against_buffer_gradient(tmp_path) -> None:
    tr = make_trainer(tiny_config("agem", {"buffer_tokens": 17 * 20}), tmp_path / "r")
    m = tr.method
    tr.current_domains = ["arith"]
    for s in range(6):  # fill the buffer with phase-1 sequences
        x, y = tr.batch(["arith"], "fill", s)
        m.store(tr, x, y)
    tr.progress.phase = 1
    tr.current_domains = ["dyck"]
    hits = 0
    for s in range(8):
        tr.progress.phase_step = s
        x, y = tr.batch(["dyck"], "train", 2, s)
        tr.model.zero_grad()
        m.training_loss(tr, x, y).backward()
        m.after_backward(tr, (x, y))
        buf = m.buffer
        old = (buf.group[: buf.size] != m.group_id(tr)).double()
        from sparsecl.methods.common import keyed
        xr, yr = buf.batch(buf.sample_index(4, keyed(tr, "agem-ref", 2, s), old), x.device)
        params = [p for p in tr.model.parameters() if p.grad is not None]
        g = [p.grad.clone() for p in params]
        ref = torch.autograd.grad(tr.model.loss(xr, yr), params)
        dot = sum(float((a * b).sum()) for a, b in zip(g, ref, strict=True))
        assert dot >= -1e-6
        hits += 1
    assert m.steps == hits


def test_sam_perturbation_has_norm_rho_and_respects_masks(tmp_path) -> None:
    tr = make_trainer(tiny_config("sam", {"rho": 0.07}, density=0.5), tmp_path / "r")
    model = tr.model
    x, y = tr.batch(["arith"], "t", 0)
    model.loss(x, y).backward()
    params = [p for p in model.parameters() if p.grad is not None]
    masks = param_masks(model)
    assert masks
    eps = perturbation(params, masks, 0.07)
    norm = torch.sqrt(sum((e ** 2).sum() for e in eps))
    assert abs(float(norm) - 0.07) < 1e-6
    for p, e in zip(params, eps, strict=True):
        if id(p) in masks:
            assert float(e[~masks[id(p)]].abs().max()) == 0.0
    # the full hook: weights restored exactly, gradient taken at theta + e
    theta = [p.detach().clone() for p in params]
    probe = copy.deepcopy(model)
    with torch.no_grad():
        for q, e in zip([q for q in probe.parameters() if q.requires_grad], eps, strict=True):
            q.add_(e)
    probe.loss(x, y).backward()
    model.zero_grad()
    tr.method.training_loss(tr, x, y).backward()
    tr.method.after_backward(tr, (x, y))
    for p, t0, q in zip(params, theta, [q for q in probe.parameters() if q.grad is not None], strict=True):
        assert torch.equal(p.detach(), t0)
        assert torch.allclose(p.grad, q.grad, atol=1e-6)


@pytest.mark.parametrize("density,new_blocks", [(1.0, 1), (0.5, 2)])
def test_expand_preserves_function_and_adds_blocks(tmp_path, density, new_blocks) -> None:
    cfg = tiny_config("expand", {"new_blocks": new_blocks}, density=density)
    tr = make_trainer(cfg, tmp_path / "r")
    tr.optimizer = tr.make_optimizer()
    model = tr.model
    with torch.no_grad():  # make the output projections nonzero so copying matters
        for blk in model.blocks:
            blk.attn.o.weight.add_(0.05 * (blk.attn.o.mask if blk.attn.o.mask is not None else 1))
    x, _ = tr.batch(["arith"], "t", 0)
    model.eval()
    before = model(x).detach()
    n_before, layers_before = model.param_count(), len(tr.layers)
    tr.method.begin_phase(tr, 2)
    after = model(x).detach()
    assert float((after - before).abs().max()) < 1e-6
    per_block = sum(p.numel() for p in Block(cfg.model).parameters())
    assert model.param_count() - n_before == new_blocks * per_block
    assert len(model.blocks) == 2 + new_blocks
    assert len(tr.layers) == layers_before + 6 * new_blocks
    positions = tr.method.expansions[0]["positions"]
    assert positions == insert_positions(2, new_blocks)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for i in positions for p in model.blocks[i].parameters()}
    in_opt = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert in_opt == trainable
    if density < 1.0:
        for i in positions:
            new, src = model.blocks[i], model.blocks[i - 1]
            for name in ("attn.qkv", "mlp.up"):
                nm, sm = new.get_submodule(name), src.get_submodule(name)
                assert int(nm.mask.sum()) == int(sm.mask.sum())
                assert not torch.equal(nm.mask, sm.mask)  # a fresh draw under a new layer name
                assert float(nm.weight.detach()[~nm.mask].abs().max()) == 0.0


def test_lwf_loss_is_plain_ce_when_student_equals_teacher(tmp_path) -> None:
    tr = make_trainer(tiny_config("lwf", {"lam": 3.0, "temperature": 2.0}), tmp_path / "r")
    tr.method.end_phase(tr, 1)
    x, y = tr.batch(["arith"], "t", 0)
    with torch.no_grad():
        logits = tr.model(x)
    assert float(distill_loss(logits, logits, 2.0)) == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        total = tr.method.training_loss(tr, x, y)
        assert float(total) == pytest.approx(float(tr.model.loss(x, y)), abs=1e-6)
        tr.model.wte.weight.mul_(1.5)
        assert float(tr.method.training_loss(tr, x, y)) > float(tr.model.loss(x, y)) + 1e-4


class FixedLogits(torch.nn.Module):
    """Same next-token distribution at every position, whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(idx.shape[0], idx.shape[1], -1)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_genreplay_samples_follow_the_model_distribution(temperature) -> None:
    logits = torch.tensor([3.0, 1.5, 0.0, -1.0, 2.0, -2.0, 0.5, 1.0])
    seqs = sample_sequences(FixedLogits(logits), 200, 41, 16, temperature, torch.Generator().manual_seed(1),
                            torch.device("cpu"), start=0)
    assert seqs.shape == (200, 41) and bool((seqs[:, 0] == 0).all())
    counts = torch.bincount(seqs[:, 1:].flatten(), minlength=8).double()
    expected = torch.softmax(logits.double() / temperature, 0) * counts.sum()
    _, p = stats.chisquare(counts.numpy(), expected.numpy())
    assert p > 1e-3


def test_genreplay_mixes_generated_rows(tmp_path) -> None:
    tr = make_trainer(tiny_config("genreplay", {"samples": 5, "ratio": 0.5}), tmp_path / "r")
    tr.progress.phase = 1
    tr.method.begin_phase(tr, 2)
    gen = tr.method.generated
    assert gen.shape == (5, 17) and bool((gen[:, 0] == 0).all())


def test_simreplay_weights_follow_similarity() -> None:
    w = similarity_weights([0.9, 0.3, -0.5], 0.0)
    assert w == pytest.approx([0.75, 0.25, 0.0])
    w = similarity_weights([0.9, 0.3, -0.5], 0.1)
    assert w == pytest.approx([1.0 / 1.5, 0.4 / 1.5, 0.1 / 1.5])


def test_derpp_stores_topk_logits_of_trained_rows(tmp_path) -> None:
    tr = make_trainer(tiny_config("derpp", {"topk": 4, "buffer_tokens": 17 * 100}), tmp_path / "r")
    tr.current_domains = ["arith"]
    x, y = tr.batch(["arith"], "t", 0)
    tr.method.training_loss(tr, x, y)
    buf = tr.method.buffer
    assert buf.size == 4
    with torch.no_grad():
        top = tr.model(x).topk(4, dim=-1)
    assert torch.allclose(buf.extra["topv"][:4], top.values, atol=1e-6)
    assert torch.equal(buf.extra["topi"][:4].long(), top.indices)
    assert torch.equal(buf.tokens[:4, :-1].long(), x)


# ------------------------------------------------------------------ loss terms pinned to hand-computed values
def _ce(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Mean token cross-entropy written out: logsumexp - the target's logit, in float64."""
    lg = logits.double().reshape(-1, logits.size(-1))
    return float((torch.logsumexp(lg, -1) - lg.gather(1, y.reshape(-1, 1)).squeeze(1)).mean())


def test_derpp_loss_is_ce_plus_alpha_logit_mse_plus_beta_buffer_ce(tmp_path) -> None:
    """With a one-sequence buffer both replay terms read that sequence, so the loss is computable outside
    the method: CE(new) + alpha * mean((logits at stored indices - stored values)^2) + beta * CE(buffered)."""
    alpha, beta = 0.3, 0.7
    cfg = tiny_config("derpp", {"alpha": alpha, "beta": beta, "topk": 3, "buffer_tokens": 17})
    tr = make_trainer(cfg, tmp_path / "r")
    tr.current_domains = ["arith"]
    model, m = tr.model.eval(), tr.method
    x, y = tr.batch(["arith"], "t", 0)
    with torch.no_grad():
        first = float(m.training_loss(tr, x, y))
        assert first == pytest.approx(_ce(model(x), y), abs=1e-5)  # empty buffer: plain CE
        assert m.buffer.size == 1
        seq = m.buffer.tokens[0].long()
        xr, yr = seq[:-1].unsqueeze(0), seq[1:].unsqueeze(0)
        topv, topi = m.buffer.extra["topv"][0].double(), m.buffer.extra["topi"][0].long()
        model.wte.weight.mul_(1.3)  # the model moves, so the stored logits no longer match
        x2, y2 = tr.batch(["arith"], "t", 1)
        tr.progress.phase_step = 1
        total = float(m.training_loss(tr, x2, y2))
        lr = model(xr).double()[0]
        mse = float(((lr.gather(-1, topi) - topv) ** 2).mean())
        ce_new, ce_buf = _ce(model(x2), y2), _ce(lr, yr[0])
    assert mse > 1e-3 and abs(mse - ce_buf) > 0.1  # a swapped alpha/beta would show
    assert total == pytest.approx(ce_new + alpha * mse + beta * ce_buf, abs=1e-5)


class ConstLogits(torch.nn.Module):
    """Logits (1, T, V) fixed per position, whatever the input; a parameter so that it can be a student."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(idx.shape[0], -1, -1)


def test_lwf_distillation_is_t_squared_kl_teacher_to_student_by_hand() -> None:
    """T = 2, lambda = 0.5, two positions over a 2-token vocabulary.

    position 0: teacher logits (ln 81, 0) -> softmax at T=2: (9/10, 1/10); student (ln 4, 0) -> (2/3, 1/3)
    position 1: teacher = student = (0, 0): KL 0.
    KL(teacher || student) at position 0 = 9/10 ln(27/20) + 1/10 ln(3/10); the mean over the two positions
    is half of it, times T^2 = 4. The reversed KL(student || teacher) = 2/3 ln(20/27) + 1/3 ln(10/3) differs,
    and so would a student left at T = 1 ((4/5, 1/5)).
    """
    kl = 0.9 * math.log(27 / 20) + 0.1 * math.log(3 / 10)
    reverse = (2 / 3) * math.log(20 / 27) + (1 / 3) * math.log(10 / 3)
    expected = 4.0 * kl / 2
    assert abs(expected - 4.0 * reverse / 2) > 0.05  # the two directions are distinguishable here
    teacher = torch.tensor([[[math.log(81), 0.0], [0.0, 0.0]]])
    student = torch.tensor([[[math.log(4), 0.0], [0.0, 0.0]]])
    assert float(distill_loss(student, teacher, 2.0)) == pytest.approx(expected, rel=1e-5)
    # through the method's hook: CE on the current batch (targets token 0) + lambda * the term above
    lwf = build_method("lwf", {"lam": 0.5, "temperature": 2.0})
    tr = SimpleNamespace(model=ConstLogits(student.clone()))
    x, y = torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long)
    with torch.no_grad():
        assert float(lwf.training_loss(tr, x, y)) == pytest.approx(_ce(student, y), rel=1e-6)  # no teacher yet
        lwf.teacher = ConstLogits(teacher.clone())
        ce = (math.log(5 / 4) + math.log(2)) / 2  # -ln softmax(ln 4, 0)[0] = ln(5/4); -ln(1/2) = ln 2
        assert float(lwf.training_loss(tr, x, y)) == pytest.approx(ce + 0.5 * expected, rel=1e-5)


def test_ewc_online_fisher_decays_by_gamma_and_penalty_by_hand(monkeypatch) -> None:
    """Phase Fishers F1, F2 (constructed): after two phases F = gamma * F1 + F2, the anchor is theta at the
    second phase end, and the penalty is lambda / 2 * sum F (theta - anchor)^2."""
    import sparsecl.methods.ewc as ewc_mod

    model = Quadratic()
    phase_fisher = {1: torch.tensor([2.0, 4.0]), 2: torch.tensor([1.0, 3.0])}
    calls: list[int] = []

    def fake_fisher(mdl, x, y, params, gen=None):  # the phase's Fisher, whatever the batch
        calls.append(x.shape[0])
        return {n: phase_fisher[len(tr.done) + 1].clone() for n, _ in params}

    monkeypatch.setattr(ewc_mod, "per_sequence_fisher", fake_fisher)
    tr = SimpleNamespace(model=model, current_domains=["a"], done=[],
                         batch=lambda doms, *key: (torch.zeros(4, 3, dtype=torch.long),) * 2)
    ewc = build_method("ewc", {"lam": 3.0, "gamma": 0.25, "fisher_samples": 6})
    ewc.end_phase(tr, 1)  # 6 samples in chunks of 4 and 2, weighted by size: still F1
    assert calls == [4, 2]
    assert torch.allclose(ewc.fisher["theta"], phase_fisher[1])
    tr.done.append(1)
    with torch.no_grad():
        model.theta.copy_(torch.tensor([0.5, 1.5]))
    ewc.end_phase(tr, 2)
    assert torch.allclose(ewc.fisher["theta"], torch.tensor([0.25 * 2.0 + 1.0, 0.25 * 4.0 + 3.0]))  # (1.5, 4.0)
    assert torch.equal(ewc.anchor["theta"], torch.tensor([0.5, 1.5]))
    with torch.no_grad():
        model.theta.copy_(torch.tensor([1.5, 1.0]))
    # 3 / 2 * (1.5 * 1.0^2 + 4.0 * 0.5^2) = 1.5 * 2.5 = 3.75; the training loss adds the task loss
    assert float(ewc.penalty(model).detach()) == pytest.approx(3.75, rel=1e-6)
    task = 0.5 * (1.0 * 1.5 ** 2 + 3.0 * 1.0 ** 2)  # Quadratic: 0.5 * sum a theta^2 = 2.625
    assert float(ewc.training_loss(tr, None, None).detach()) == pytest.approx(task + 3.75, rel=1e-6)
