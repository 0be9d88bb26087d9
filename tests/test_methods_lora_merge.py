"""Mechanisms of lora, olora and merge on constructed cases with hand-computed answers.

Exact resume mid-phase of each is in test_methods_training.py (RESUME_CASES), the mask invariant on saved
checkpoints in test_conformance.py.
"""

from __future__ import annotations

import pytest
import torch
from methods_util import make_trainer, tiny_config

from sparsecl.errors import ConfigError
from sparsecl.methods.lora import layer_delta
from sparsecl.methods.olora import orthogonality_penalty, subspace_overlap
from sparsecl.sparse.csr import CSRLinear

torch.set_num_threads(1)


def _lora_trainer(tmp_path, backend: str, **params):
    cfg = tiny_config("lora", {"rank": 4, "alpha": 16.0, "full_first_phase": False, **params}, density=0.5,
                      sparse={"density": 0.5, "backend": backend})
    tr = make_trainer(cfg, tmp_path / "r")
    tr.optimizer = tr.make_optimizer()
    return tr


def _train_steps(tr, n: int) -> None:
    for s in range(n):
        x, y = tr.batch(["arith"], "t", s)
        tr.optimizer.zero_grad(set_to_none=True)
        tr.method.training_loss(tr, x, y).backward()
        tr.optimizer.step()


@pytest.mark.parametrize("backend", ["masked", "csr"])
def test_lora_base_frozen_only_adapters_in_optimizer(tmp_path, backend) -> None:
    tr = _lora_trainer(tmp_path, backend)
    tr.method.begin_phase(tr, 1)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters() if ".lora." not in n}
    adapters = [p for n, p in tr.model.named_parameters() if ".lora." in n]
    in_opt = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in adapters} and len(adapters) == 2 * 12  # A, B of q,k,v,o,up,down x 2 blocks
    assert tr.cfg.train.weight_decay == 0.1  # decay is on: it must still not touch the frozen base
    _train_steps(tr, 3)
    for n, p in tr.model.named_parameters():
        if ".lora." not in n:
            assert torch.equal(p, before[n]), n
    assert all(isinstance(m, CSRLinear) == (backend == "csr") for m in tr.model.maskable().values())
    assert any(float(p.detach().abs().max()) > 0 for n, p in tr.model.named_parameters() if n.endswith(".B"))


@pytest.mark.parametrize("backend", ["masked", "csr"])
def test_lora_effective_weight_and_merge_by_hand(tmp_path, backend) -> None:
    tr = _lora_trainer(tmp_path, backend)
    tr.method.begin_phase(tr, 1)
    mod = tr.model.blocks[0].attn.qkv
    ad = mod.lora["p1"]
    with torch.no_grad():
        for part in ("q", "k", "v"):
            ad[part].A.zero_()
            ad[part].B.zero_()
        ad["k"].A[0, 3] = 1.0  # B A has one entry: row 5 of k, column 3, value 2 * 1 = 2
        ad["k"].B[5, 0] = 2.0
    rows = 32 + 5  # k's rows follow q's 32
    scale = 16.0 / 4
    delta = layer_delta(mod, scale)
    want = torch.zeros(96, 32)
    want[rows, 3] = 8.0 * float(mod.mask[rows, 3])  # (alpha / r) * 2, through the mask
    assert torch.equal(delta, want)
    # the layer computes x ((W + delta) ⊙ M)^T
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    w = mod.dense_weight().detach().clone()
    with torch.no_grad():
        assert torch.allclose(mod(x), x @ ((w + want) * mod.mask).t(), atol=1e-6)
    # an entry off the mask: the update never reaches it
    off = (~mod.mask[rows]).nonzero()[0].item()
    with torch.no_grad():
        ad["k"].A[0] = 0.0
        ad["k"].A[0, off] = 1.0
    assert float(layer_delta(mod, scale).detach().abs().max()) == 0.0
    # merge at phase end: W <- (W + (alpha/r) B A) ⊙ M, B <- 0, the function unchanged
    with torch.no_grad():
        ad["k"].A[0, off] = 0.0
        ad["k"].A[0, 3] = 1.0
        ad["q"].A.copy_(torch.randn(4, 32, generator=torch.Generator().manual_seed(1)))
        ad["q"].B.copy_(torch.randn(32, 4, generator=torch.Generator().manual_seed(2)))
    full = (w + scale * torch.cat([ad["q"].B @ ad["q"].A, (ad["k"].B @ ad["k"].A), torch.zeros(32, 32)])).detach()
    xb, _ = tr.batch(["arith"], "t", 0)
    with torch.no_grad():
        out_before = tr.model(xb)
    tr.method.end_phase(tr, 1)
    merged = mod.dense_weight().detach()
    assert torch.allclose(merged, full * mod.mask, atol=1e-6)
    assert float(merged[~mod.mask].abs().max()) == 0.0
    assert merged[rows, 3] == w[rows, 3] + 8.0 * float(mod.mask[rows, 3])
    assert all(float(a.B.detach().abs().max()) == 0.0 for a in ad.values())
    with torch.no_grad():
        assert torch.allclose(tr.model(xb), out_before, atol=1e-5)
    assert tr.method.merged == [1]


def test_lora_keep_stacks_frozen_adapters_and_never_touches_base(tmp_path) -> None:
    tr = _lora_trainer(tmp_path, "masked", at_phase_end="keep")
    base = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    for phase in (1, 2):
        tr.method.begin_phase(tr, phase)
        _train_steps(tr, 2)
        tr.method.end_phase(tr, phase)
    mod = tr.model.blocks[1].mlp.up
    assert list(mod.lora) == ["p1", "p2"]
    p1 = {n: p.detach().clone() for n, p in mod.lora["p1"].named_parameters()}
    tr.method.begin_phase(tr, 3)
    _train_steps(tr, 2)
    assert all(torch.equal(p, p1[n]) and not p.requires_grad for n, p in mod.lora["p1"].named_parameters())
    assert all(p.requires_grad for p in mod.lora["p3"].parameters())
    for n, p in base.items():
        assert torch.equal(dict(tr.model.named_parameters())[n], p), n
    # the layer adds every phase's term: delta = 4 * (B1 A1 + B2 A2 + B3 A3) ⊙ M
    s = mod.lora
    want = 4.0 * sum(s[k]["up"].B @ s[k]["up"].A for k in ("p1", "p2", "p3")) * mod.mask
    assert torch.allclose(layer_delta(mod, 4.0), want, atol=1e-7)
    # per block and set: q, k, v, o 4·32 + 32·4 each; up 4·32 + 128·4; down 4·128 + 32·4
    assert tr.method.summary_info()["adapter_params"] == 3 * 2 * (4 * 256 + 2 * 640) == 13824


def test_olora_penalty_and_overlap_by_hand() -> None:
    e = torch.eye(4)
    old = [e[[0, 1]]]  # rows e0, e1 (rank 2)
    new = torch.stack([e[1] + e[2], 3 * e[0]])
    # A_old A_new^T = [[0, 3], [1, 0]]: squared Frobenius norm 10
    assert float(orthogonality_penalty(old, new)) == 10.0
    assert float(orthogonality_penalty([*old, e[[2, 3]]], new)) == 10.0 + 1.0  # e2 . (e1 + e2) = 1
    # new spans {e0, (e1 + e2)/sqrt 2}: projections onto span{e0, e1} square to 1 and 1/2; / rank 2
    assert subspace_overlap(old, new) == pytest.approx(0.75, abs=1e-12)
    assert subspace_overlap([e[[2, 3]]], e[[0, 1]]) == pytest.approx(0.0, abs=1e-12)
    assert subspace_overlap([e[[0, 1]]], e[[1, 0]]) == pytest.approx(1.0, abs=1e-12)


def test_olora_training_loss_adds_lambda_penalty_and_records_overlap(tmp_path) -> None:
    cfg = tiny_config("olora", {"rank": 2, "lam": 0.25, "full_first_phase": False, "targets": ["o"]})
    tr = make_trainer(cfg, tmp_path / "r")
    tr.optimizer = tr.make_optimizer()
    m = tr.method
    m.begin_phase(tr, 1)
    x, y = tr.batch(["arith"], "t", 0)
    assert torch.equal(m.training_loss(tr, x, y), tr.model.loss(x, y))  # no earlier subspace yet
    e = torch.eye(32)
    with torch.no_grad():
        for b in tr.model.blocks:
            b.attn.o.lora["p1"]["o"].A.copy_(e[[0, 1]])
    m.end_phase(tr, 1)
    m.begin_phase(tr, 2)
    with torch.no_grad():
        tr.model.blocks[0].attn.o.lora["p2"]["o"].A.copy_(torch.stack([e[1] + e[2], 3 * e[0]]))  # penalty 10
        tr.model.blocks[1].attn.o.lora["p2"]["o"].A.copy_(e[[4, 5]])  # orthogonal: 0
    got = m.training_loss(tr, x, y) - tr.model.loss(x, y)
    assert float(got.detach()) == pytest.approx(0.25 * 10.0, rel=1e-6)
    m.end_phase(tr, 2)
    assert m.summary_info()["subspace_overlap"] == [{"phase": 2, "penalty": 10.0, "overlap": pytest.approx(0.375)}]
    assert sorted(m.state_tensors()) == [f"old_a.blocks.{i}.attn.o.o.{j}" for i in (0, 1) for j in (0, 1)]


@pytest.mark.parametrize("backend", ["masked", "csr"])
@pytest.mark.parametrize("mode,after2,after3", [("average", 3.0, 4.0), ("task_arithmetic", 3.0, 4.5)])
def test_merge_average_and_task_arithmetic_by_hand(tmp_path, backend, mode, after2, after3) -> None:
    """θ_1 = 2, θ_2 = 4, θ_3 = 6 everywhere (each phase "trained" to that value from the merged start).
    average: M_2 = (2 + 4) / 2 = 3, M_3 = 3 + (6 - 3) / 3 = 4 = mean(2, 4, 6);
    task arithmetic, scale 0.5: M_2 = 2 + 0.5 (4 - 2) = 3, M_3 = 3 + 0.5 (6 - 3) = 4.5."""
    cfg = tiny_config("merge", {"mode": mode, "scale": 0.5}, density=0.5, sparse={"density": 0.5, "backend": backend})
    tr = make_trainer(cfg, tmp_path / "r")
    tr.optimizer = tr.make_optimizer()
    model = tr.model

    @torch.no_grad()
    def fill(v: float) -> None:
        for p in model.parameters():
            p.fill_(v)
        for mod in model.maskable().values():
            mod.set_weight(torch.full_like(mod.dense_weight(), v))  # off the mask stays 0

    def check(v: float) -> None:
        for mod in model.maskable().values():
            w = mod.dense_weight().detach()
            assert float(w[~mod.mask].abs().max()) == 0.0
            assert torch.equal(w[mod.mask], torch.full_like(w[mod.mask], v))
        assert torch.equal(model.wte.weight, torch.full_like(model.wte.weight, v))

    fill(2.0)
    tr.method.end_phase(tr, 1)  # phase 1 trains the base: nothing merges
    check(2.0)
    for phase, theta, want in ((2, 4.0, after2), (3, 6.0, after3)):
        tr.method.begin_phase(tr, phase)
        _train_steps(tr, 1)  # AdamW state exists before the merge
        fill(theta)
        tr.method.end_phase(tr, phase)
        check(want)
        for st in tr.optimizer.state.values():  # reset like a fresh AdamW
            assert all(float(v.abs().max()) == 0.0 for v in st.values())
    assert [m["coefficient"] for m in tr.method.merges] == ([0.5, 1 / 3] if mode == "average" else [0.5, 0.5])


@pytest.mark.parametrize("method,params,field", [
    ("lora", {"rank": 0}, "rank"), ("lora", {"targets": []}, "targets"), ("lora", {"targets": ["q", "x"]}, "targets"),
    ("lora", {"alpha": -1.0}, "alpha"), ("lora", {"at_phase_end": "drop"}, "at_phase_end"),
    ("olora", {"lam": -0.1}, "lam"), ("merge", {"scale": 0.0}, "scale"), ("merge", {"mode": "soup"}, "mode"),
    ("lora", {"rank": 33}, "rank"),
])
def test_bad_params_name_the_field(method, params, field) -> None:
    with pytest.raises(ConfigError, match=rf"method\.params\.{field}"):
        tiny_config(method, params)


def test_lora_merged_phase_checkpoint_is_the_plain_model_kept_is_refused_post_hoc(tmp_path) -> None:
    from safetensors.torch import load_file

    from sparsecl.errors import UserError
    from sparsecl.probes.posthoc import probe_run
    from sparsecl.train.runner import run_experiment

    cfg = tiny_config("lora", {"rank": 2}, density=0.5, steps=3)
    tr = make_trainer(cfg, tmp_path / "m")
    tr.run()
    plain = make_trainer(cfg, tmp_path / "fresh")  # the model the config builds: no adapters, no hooks
    state = {k[len("model."):]: v for k, v in load_file(tmp_path / "m" / "ckpt" / "phase-003.safetensors").items()}
    assert any(".lora." in k for k in state)
    plain.model.load_state_dict(state, strict=False)
    assert plain.evaluate() == tr.evaluate()
    kept = tiny_config("lora", {"rank": 2, "at_phase_end": "keep"}, density=0.5, steps=3)
    run_experiment([kept], tmp_path / "k", progress_bar=False)
    with pytest.raises(UserError, match="adapters kept per phase"):
        probe_run(tmp_path / "k" / kept.name, ["param_drift"])
