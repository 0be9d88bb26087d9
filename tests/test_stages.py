"""Training stages (issue 10): SFT masking, GRPO's pieces, the built-in tasks and their rewards, RL learning
and an exact resume in the middle of an RL phase."""

from __future__ import annotations

import json
import math
import os
import string
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from sparsecl.config import build_config
from sparsecl.data import synthetic
from sparsecl.data.tasks import TASKS, exact_match
from sparsecl.data.tokenizer import DOC_SEP, encode
from sparsecl.model.gpt import GPT
from sparsecl.train.objectives.grpo import EPS, clipped_objective, group_advantages, kl_estimate, token_logps
from sparsecl.train.objectives.sampling import (
    answer_text,
    complete,
    complete_batch,
    greedy_accuracy,
    pad_right,
    prompt_tokens,
    valid_mask,
)
from sparsecl.train.objectives.sft import IGNORE, draw_pairs, sft_batch
from sparsecl.train.runner import run_experiment


def test_group_advantages_on_a_constructed_batch() -> None:
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    a = group_advantages(r)
    s = math.sqrt(1 / 3)  # unbiased std of (1, 0, 0, 1)
    assert a[0].tolist() == pytest.approx([0.5 / (s + EPS), -0.5 / (s + EPS), -0.5 / (s + EPS), 0.5 / (s + EPS)])
    assert a[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # equal rewards teach nothing
    s3 = math.sqrt((2.25 ** 2 + 3 * 0.75 ** 2) / 3)
    assert a[2].tolist() == pytest.approx([2.25 / (s3 + EPS), *[-0.75 / (s3 + EPS)] * 3])


def test_kl_term_is_zero_at_the_reference_and_matches_hand_values() -> None:
    logp = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    assert kl_estimate(logp, logp).tolist() == [[0.0, 0.0, 0.0]]
    logq = torch.log(torch.tensor([[0.25, 0.4, 0.9]]))  # q/p = 0.5, 2, 1
    assert kl_estimate(logp, logq).tolist()[0] == pytest.approx([0.5 - math.log(0.5) - 1, 2 - math.log(2) - 1, 0])
    # at the reference, the KL term adds neither value nor gradient
    lp = logp.clone().requires_grad_(True)
    obj, kl = clipped_objective(lp, logp, logp, torch.tensor([1.0]), torch.ones(1, 3, dtype=torch.bool), 0.2, 5.0)
    obj.backward()
    assert float(kl) == 0.0 and float(obj.detach()) == pytest.approx(1.0)
    assert lp.grad.tolist()[0] == pytest.approx([1 / 3] * 3)  # d/dlogp of mean(rho * A) with A = 1: rho / 3


def test_clipped_objective_by_hand() -> None:
    old = torch.zeros(2, 2)
    logp = torch.log(torch.tensor([[1.5, 0.5], [1.5, 0.5]]))  # rho = 1.5 and 0.5 (probabilities above 1 are fine)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[True, True], [True, False]])
    obj, kl = clipped_objective(logp, old, logp, adv, mask, 0.2, 0.0)
    # A = +1: min(1.5, 1.2) = 1.2 and min(0.5, 0.8) = 0.5 -> 0.85; A = -1, first token only: min(-1.5, -1.2) = -1.5
    assert float(obj) == pytest.approx((0.85 - 1.5) / 2)
    assert float(kl) == 0.0


def test_sft_masks_prompt_tokens() -> None:
    x, y = sft_batch([("ab", "cd"), ("xyz", "w")], 8)
    a, b, c, d, z, w = (int(encode(ch)[0]) for ch in "abcdzw")
    assert x[0].tolist() == [a, b, c, d, DOC_SEP, DOC_SEP, DOC_SEP, DOC_SEP]
    assert y[0].tolist() == [IGNORE, c, d, DOC_SEP, IGNORE, IGNORE, IGNORE, IGNORE]  # predicts b: prompt, masked
    assert y[1].tolist() == [IGNORE, IGNORE, w, DOC_SEP, IGNORE, IGNORE, IGNORE, IGNORE]
    assert x[1, 2].item() == z
    # the loss is the mean NLL over response tokens only
    torch.manual_seed(0)
    model = GPT(build_config(tiny_config()).model).requires_grad_(False)
    logits = model(x)
    keep = y != IGNORE
    by_hand = -F.log_softmax(logits, -1)[keep].gather(-1, y[keep][:, None]).mean()
    assert float(model.loss(x, y)) == pytest.approx(float(by_hand), rel=1e-6)


def test_sft_keeps_the_response_when_the_pair_is_longer_than_the_context() -> None:
    x, y = sft_batch([("p" * 20, "abc")], 8)
    kept = y[0][y[0] != IGNORE].tolist()
    assert kept == [*encode("abc").tolist(), DOC_SEP]


def test_valid_mask_stops_after_the_end_of_answer_token() -> None:
    c = torch.tensor([[5, DOC_SEP, 7, DOC_SEP], [5, 6, 7, 8], [DOC_SEP, 1, 2, 3]])
    assert valid_mask(c).tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]


def _sft_trained_model() -> tuple[GPT, list[tuple[str, str]]]:
    """A tiny model after a few SFT steps on facts_qa: its greedy answers stop at different lengths."""
    from sparsecl.data.domains import load_domains

    cfg = build_config(_stage_config())
    dom = load_domains(cfg.data, cfg.model.block_size)["facts_qa"]
    assert dom.pairs is not None
    torch.manual_seed(0)
    model = GPT(cfg.model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(120):
        x, y = sft_batch(draw_pairs([dom], 16, gen), cfg.model.block_size)
        opt.zero_grad()
        model.loss(x, y).backward()
        opt.step()
    return model.eval(), dom.pairs["val"][:24]


def test_batched_greedy_decoding_equals_one_prompt_at_a_time() -> None:
    torch.set_num_threads(1)
    model, pairs = _sft_trained_model()
    new, block = 6, 32
    prompts = [prompt_tokens(p, block, new) for p, _ in pairs]
    assert len({p.numel() for p in prompts}) > 3  # prompts of many lengths share the batch
    batched = complete_batch(model, prompts, new, None)
    single = torch.cat([complete(model, p, 1, new, None) for p in prompts])
    keep = valid_mask(single)
    assert torch.equal(valid_mask(batched), keep)
    assert torch.equal(batched[keep], single[keep])  # every answer token, exactly
    assert bool((batched[~keep] == DOC_SEP).all())  # a stopped row is filled with end-of-answer tokens
    stops = keep.sum(1)
    assert len(set(stops.tolist())) > 1 and int(stops.min()) < new  # rows stopped at different steps, early
    answers = [answer_text(c) for c in single]
    one = sum(exact_match(a, r) for a, (_, r) in zip(answers, pairs, strict=True)) / len(pairs)
    for chunk in (1, 5, 64):
        assert greedy_accuracy(model, pairs, exact_match, block, new, batch=chunk) == one


def test_token_logps_of_a_right_padded_batch_equal_each_rows_own() -> None:
    torch.manual_seed(0)
    model = GPT(build_config(tiny_config()).model).eval()
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(256, (n,), generator=gen) for n in (3, 9, 5)]
    comp = torch.randint(256, (3, 4), generator=gen)
    inp, lens = pad_right(prompts, 9 + 4 - 1)
    for i, p in enumerate(prompts):
        inp[i, p.numel():p.numel() + 3] = comp[i, :3]
    logp, ent = token_logps(model, inp, lens, comp, 0.7)
    for i, p in enumerate(prompts):
        seq = torch.cat([p, comp[i]])
        alone = F.log_softmax(model(seq[None, :-1])[0, p.numel() - 1:].float() / 0.7, -1)
        assert torch.allclose(logp[i], alone.gather(-1, comp[i][:, None]).squeeze(-1), atol=1e-5)
        assert torch.allclose(ent[i], -(alone.exp() * alone).sum(-1), atol=1e-5)


def test_a_phase_lr_scales_the_whole_schedule() -> None:
    from sparsecl.train.trainer import lr_at

    cfg = build_config(tiny_config(schedule=[{"domain": "arith", "steps": 12},
                                             {"domain": "facts", "steps": 12, "lr": 3e-4}]))
    assert cfg.schedule[1].lr == 3e-4 and cfg.schedule[0].lr is None
    for s in range(12):  # warmup 2, cosine from 3e-3 to 3e-4 by default; a tenth of it with lr 3e-4
        assert lr_at(cfg, s, 12, 3e-4) == pytest.approx(lr_at(cfg, s, 12) / 10, rel=1e-12)
    assert lr_at(cfg, 0, 12, 3e-4) == pytest.approx(1.5e-4)
    assert lr_at(cfg, 11, 12, 3e-4) == pytest.approx(3e-5 + 0.5 * 2.7e-4 * (1 + math.cos(0.9 * math.pi)))


def _caesar(text: str, k: int) -> str:
    low = string.ascii_lowercase
    return text.translate(str.maketrans(low, low[k:] + low[:k]))


def test_each_task_is_correct_and_its_reward_checks_exact_answers() -> None:
    pairs = {n: t.make(20_000) for n, t in TASKS.items()}
    for name, ps in pairs.items():
        assert len(ps) > 50, name
        prompt, response = ps[0]
        reward = TASKS[name].reward
        assert reward(response, response) == 1.0 and reward(f" {response} ", response) == 1.0, name
        assert reward(response + "0", response) == 0.0 and reward("", response) == 0.0, name
    for prompt, response in pairs["arith_qa"]:  # the answer is the sum or difference
        a, op, b = prompt.split()[1:4]
        assert int(response) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    assert exact_match("-42", "-42") == 1.0 and exact_match("42", "-42") == 0.0
    close = {")": "(", "]": "[", "}": "{", ">": "<"}
    for prompt, response in pairs["dyck_qa"]:  # prompt + response is balanced, and the response only closes
        s = prompt.split()[1] + response
        stack: list[str] = []
        for ch in s:
            if ch in close:
                assert stack and stack.pop() == close[ch]
            else:
                stack.append(ch)
        assert not stack and all(ch in close for ch in response)
    for prompt, response in pairs["cipher_qa"]:  # shifting the answer by k gives the cipher words
        k = int(prompt.split()[0][3:])
        assert _caesar(response, k) == prompt.split(" => ")[0].split(": ", 1)[1]
    facts_text = "\n".join(synthetic.facts(20_000))
    for prompt, response in pairs["facts_qa"][:50]:
        name = prompt.split()[2] if prompt.startswith("where") else prompt.split()[-1].rstrip("?")
        assert (f"{name} lives in {response}." in facts_text or f"colour of {name} is {response}." in facts_text
                or f"{name} owns {response} books." in facts_text)


def _stage_config(**over: Any) -> dict[str, Any]:
    cfg = tiny_config(schedule=[{"domain": "arith", "steps": 4}, {"domain": "facts_qa", "steps": 4, "objective": "sft"},
                                {"domain": "facts_qa", "steps": 6, "objective": "rl"}], probes=[])
    cfg["data"]["domains"].append({"name": "facts_qa", "max_bytes": 20_000})
    cfg["eval"].update({"every": 0, "task_prompts": 4})
    cfg["rl"] = {"group_size": 2, "completion_length": 4, "prompts": 2}
    cfg.update(over)
    return cfg


def test_task_split_is_the_document_hash_split(tmp_path: Path) -> None:
    from sparsecl.data.domains import is_val, load_domains

    cfg = build_config(_stage_config())
    d = load_domains(cfg.data, cfg.model.block_size)["facts_qa"]
    assert d.pairs is not None and d.pairs["val"] and d.pairs["train"]
    assert all(is_val(p + r, "sparsecl", 0.1) for p, r in d.pairs["val"])
    assert not any(is_val(p + r, "sparsecl", 0.1) for p, r in d.pairs["train"])
    assert not {p for p, _ in d.pairs["val"]} & {p for p, _ in d.pairs["train"]}


@pytest.mark.parametrize("mu", [1, 2])
def test_a_grpo_phase_raises_a_tiny_tasks_reward(tmp_path: Path, mu: int) -> None:
    """SFT teaches the answers 'a' and 'b' equally; GRPO on a task whose answer is always 'a' then moves the
    policy to 'a' within a fixed number of seeded steps: the sampled reward rises from below 0.75 to at least 0.95
    and greedy decoding answers every validation prompt right (also with mu = 2 updates per sampled batch)."""
    ab = [{"p": f"q{i}: ", "r": "ab"[i % 2]} for i in range(60)]
    (tmp_path / "ab.jsonl").write_text("\n".join(json.dumps(r) for r in ab))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"p": f"q{i}: ", "r": "a"}) for i in range(60)))
    doms = [{"name": n, "source": "jsonl", "path": str(tmp_path / f"{n}.jsonl"), "prompt_field": "p",
             "response_field": "r"} for n in ("ab", "a")]
    cfg = tiny_config(schedule=[{"domain": "ab", "steps": 30, "objective": "sft"},
                                {"domain": "a", "steps": 30, "objective": "rl"}], probes=[])
    cfg["data"] = {"domains": doms, "val_fraction": 0.2}
    cfg["eval"] = {"every": 0, "batches": 1, "batch_size": 4, "task_prompts": 8}
    cfg["train"].update({"lr": 1e-2, "min_lr": 1e-2, "lr_schedule": "constant", "warmup_steps": 0})
    cfg["rl"] = {"group_size": 8, "completion_length": 2, "prompts": 2, "beta": 0.0, "updates_per_batch": mu}
    [s] = run_experiment([build_config(cfg)], tmp_path / "out", progress_bar=False)
    rl = s.stages["objective_stats"][1]
    a = s.stages["tasks"].index("a")
    assert rl["reward_first"] < 0.75
    assert rl["reward_last"] >= 0.95
    assert s.stages["task_accuracy"][2][a] == 1.0


@pytest.mark.parametrize("method", ["ewc", "si", "olora"])
def test_rl_steps_carry_the_methods_parameter_penalty(tmp_path: Path, method: str) -> None:
    """add_penalty adds what training_loss adds to the token loss; other methods add nothing."""
    from methods_util import FAST_PARAMS, make_trainer
    from methods_util import tiny_config as method_config

    tr = make_trainer(method_config(method, FAST_PARAMS.get(method, {})), tmp_path / "r")
    tr.optimizer = tr.make_optimizer()
    for phase in (1, 2):  # finished phases give the penalty its anchor and importance (O-LoRA: a kept adapter)
        tr._run_phase(phase)
    tr.method.begin_phase(tr, 3)
    with torch.no_grad():  # move off the anchor, so the penalty is positive
        for p in tr.model.parameters():
            p.add_(0.01)
    x, y = tr.batch(["facts"], "t", 0)
    pen = float((tr.method.training_loss(tr, x, y) - tr.model.loss(x, y)).detach())
    base = torch.tensor(0.5)
    assert pen > 0 and float((tr.method.add_penalty(tr, base) - base).detach()) == pytest.approx(pen, rel=1e-4)
    naive = make_trainer(method_config("naive"), tmp_path / "n")
    assert naive.method.add_penalty(naive, base) is base


def test_stage_summary_and_logs(tmp_path: Path) -> None:
    [s] = run_experiment([build_config(_stage_config())], tmp_path, progress_bar=False)
    assert s.stages["objectives"] == ["lm", "sft", "rl"] and s.stages["tasks"] == ["facts_qa"]
    assert len(s.stages["task_accuracy"]) == 4 and all(0.0 <= r[0] <= 1.0 for r in s.stages["task_accuracy"])
    assert s.stages["objective_stats"][0] == {} and s.stages["objective_stats"][1] == {}
    L, doms = s.loss_matrix, s.domains
    a = doms.index("arith")  # the only LM domain trained before phases 2 and 3 (facts_qa is a task)
    assert s.stages["lm_forgetting_per_phase"] == pytest.approx([None, L[2][a] - L[1][a], L[3][a] - L[2][a]])
    rl = s.stages["objective_stats"][2]
    assert set(rl) == {"reward", "kl", "entropy", "completion_length", "reward_first", "reward_last"}
    assert 0.0 <= rl["reward"] <= 1.0 and rl["kl"] >= 0.0 and 0 < rl["entropy"] <= math.log(256) + 1e-6
    assert 1.0 <= rl["completion_length"] <= 4.0


@pytest.mark.parametrize("mu", [1, 3])
def test_resume_in_the_middle_of_an_rl_phase_equals_an_uninterrupted_run(tmp_path: Path, mu: int) -> None:
    """With mu = 3 the kill falls inside a sampled batch's updates: the resume reuses the saved batch."""
    cfg = _stage_config(checkpoint_every=2, name="t")
    cfg["rl"]["updates_per_batch"] = mu
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    env = {**os.environ, "SPARSECL_KILL_AT_STEP": "11", "OMP_WAIT_POLICY": "PASSIVE"}  # RL steps 9..14
    cmd = [sys.executable, "-m", "sparsecl", "run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "a"),
           "--no-progress"]
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 137
    state = json.loads((tmp_path / "a" / "t" / "ckpt" / "step-0000010.json").read_text())
    assert state["phase"] == 2 and state["phase_step"] == 2  # killed inside the RL phase, after a checkpoint
    from sparsecl.cli import main

    assert main(["resume", str(tmp_path / "a"), "--no-progress"]) == 0
    resumed = json.loads((tmp_path / "a" / "t" / "summary.json").read_text())
    straight = run_experiment([build_config(cfg)], tmp_path / "b", progress_bar=False)[0]
    for key in ("loss_matrix", "task_accuracy", "objective_stats"):
        assert resumed[key] == straight.value(key), key
    from safetensors.torch import load_file

    a = load_file(tmp_path / "a" / "t" / "ckpt" / "phase-003.safetensors")
    b = load_file(tmp_path / "b" / "t" / "ckpt" / "phase-003.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _kl_ctx(model: GPT, before: dict[str, torch.Tensor]) -> Any:
    from sparsecl.probes.context import ProbeContext

    cfg = build_config(tiny_config())
    gen = torch.Generator().manual_seed(1)
    windows = {d: (torch.randint(256, (4, 8), generator=gen), torch.zeros(4, 8, dtype=torch.long))
               for d in ("arith", "facts", "cipher")}
    return ProbeContext(model=model.eval(), cfg=cfg, windows=windows, phase=2, step=24, current=["facts"],
                        learned_phase={"arith": 1, "facts": 2}, states=lambda j: before if j == 1 else None,
                        device=torch.device("cpu"))


def test_forgetting_kl_probe_is_zero_on_identical_models_and_matches_a_hand_computation() -> None:
    from sparsecl.probes.forgetting_law import forgetting_kl, forward_kl
    from sparsecl.store.checkpoint import model_tensors

    # the KL itself: p = (1/2, 1/2) before, q = (1/4, 3/4) after at one position; identical at the other
    before = torch.log(torch.tensor([[[0.5, 0.5], [0.1, 0.9]]], dtype=torch.float64))
    after = torch.log(torch.tensor([[[0.25, 0.75], [0.1, 0.9]]], dtype=torch.float64))
    hand = 0.5 * (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75))
    assert forward_kl(before, after) == pytest.approx(hand, rel=1e-12)
    torch.manual_seed(0)
    model = GPT(build_config(tiny_config()).model)
    same = {k: v.clone() for k, v in model_tensors(model).items()}
    out = forgetting_kl(_kl_ctx(model, same))
    assert out == {"facts/kl": 0.0, "arith/kl": 0.0, "kl_new": 0.0, "kl_old": 0.0}
    # before = every weight zero: a uniform next-token distribution, so KL = mean_pos sum_v (1/V) log((1/V) / p_v)
    zero = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in same.items()}
    ctx = _kl_ctx(model, zero)
    out = forgetting_kl(ctx)
    for d in ("facts", "arith"):
        logp = F.log_softmax(model(ctx.windows[d][0]).detach().double(), -1)
        by_hand = float((-math.log(256) - logp).mean(-1).mean())
        assert out[f"{d}/kl"] == pytest.approx(by_hand, rel=1e-9)
    assert out["kl_new"] == out["facts/kl"] and out["kl_old"] == out["arith/kl"] and out["kl_new"] > 0


def _law_run(i: int, kl: float, rise: float) -> Any:
    from sparsecl.stats.analysis import Run

    L = [[3.0, 3.0, 3.0], [2.0, 3.0, 3.0], [2.0 + rise, 2.5, 3.0]]  # phase 2 trains b: a's loss rises by `rise`
    probes = [{"phase": 2, "step": 20, "phase_end": True, "values": {"forgetting_kl": {"kl_new": kl}}},
              {"phase": 2, "step": 10, "phase_end": False, "values": {"forgetting_kl": {"kl_new": 99.0}}}]
    summary = {"loss_matrix": L, "domains": ["a", "b", "t"], "tasks": ["t"], "objectives": ["lm", "sft"],
               "phases": [{"domains": ["a"]}, {"domains": ["b"]}], "probes": probes}
    return Run(f"r{i}", {}, summary)


def test_forgetting_law_points_and_rank_correlation() -> None:
    from sparsecl.stats.forgetting_law import law_points, spearman_with_ci

    runs = [_law_run(i, kl, rise) for i, (kl, rise) in enumerate([(0.1, 0.05), (0.2, 0.2), (0.4, 0.1), (0.8, 0.6)])]
    pts = law_points(runs)
    assert [(p.run_id, p.phase, p.objective, p.kl_new) for p in pts] == [
        ("r0", 2, "sft", 0.1), ("r1", 2, "sft", 0.2), ("r2", 2, "sft", 0.4), ("r3", 2, "sft", 0.8)]
    assert [p.forgetting for p in pts] == pytest.approx([0.05, 0.2, 0.1, 0.6])  # only old LM domain a counts
    c = spearman_with_ci(pts)
    assert c["rho"] == pytest.approx(0.8)  # ranks (1,2,3,4) vs (1,3,2,4): 1 - 6*2/(4*15)
    assert -1.0 <= c["lo"] <= c["rho"] <= c["hi"] <= 1.0 and c["n_runs"] == 4
    assert spearman_with_ci(pts[:2])["rho"] is None  # fewer than 3 points


def _stage_run(obj: str, seed: int, accs: list[float], losses: list[float]) -> Any:
    """A constructed finished run: pretraining on 'a' (loss 2.0 at its end), then the task 't' by ``obj``;
    evaluations inside the last phase have the given task accuracies and losses on 'a'."""
    from sparsecl.stats.analysis import Run

    sched = [{"domains": ["a"], "steps": 10},
             {"domains": ["t"], "steps": 10, "objective": obj, "lr": 3e-4 if obj == "rl" else None}]
    evals = [{"phase": 0, "phase_step": 0, "step": 0, "loss": {"a": 3.0, "t": 3.0}, "task_accuracy": {"t": 0.0}},
             {"phase": 1, "phase_step": 10, "step": 10, "loss": {"a": 2.0, "t": 3.0}, "task_accuracy": {"t": 0.1}}]
    evals += [{"phase": 2, "phase_step": 5 * (i + 1), "step": 10 + 5 * (i + 1), "loss": {"a": lo, "t": 1.0},
               "task_accuracy": {"t": ac}} for i, (ac, lo) in enumerate(zip(accs, losses, strict=True))]
    summary = {"phases": sched, "tasks": ["t"], "stage_evals": evals, "domains": ["a", "t"]}
    cfg = {"seed": seed, "sparse": {"density": 1.0}, "method": {"name": "naive"}, "schedule": sched}
    return Run(f"{obj}-{seed}", cfg, summary)


def test_sft_vs_rl_forgetting_at_equal_compute_and_matched_accuracy() -> None:
    from sparsecl.stats.stages import stage_rows

    runs = [_stage_run("sft", 0, [0.4, 0.8], [2.2, 2.5]), _stage_run("rl", 0, [0.3, 0.5], [2.05, 2.1]),
            _stage_run("sft", 1, [0.2, 0.6], [2.1, 2.4]), _stage_run("rl", 1, [0.2, 0.7], [2.0, 2.2]),
            _stage_run("sft", 2, [0.5, 0.9], [2.3, 2.6])]  # seed 2 has no RL partner: left out
    [row] = stage_rows(runs)
    assert row["n"] == 2 and row["reached"] == 1  # seed 1's SFT never reaches RL's 0.7
    assert row["forget_sft"][0] == pytest.approx((0.5 + 0.4) / 2)
    assert row["forget_rl"][0] == pytest.approx((0.1 + 0.2) / 2)
    assert row["diff_equal_compute"][0] == pytest.approx(((0.5 - 0.1) + (0.4 - 0.2)) / 2)
    # seed 0: SFT first reaches RL's 0.5 at its 0.8 point (loss 2.5); seed 1: never, so its last point (2.4)
    assert row["forget_sft_matched"][0] == pytest.approx((0.5 + 0.4) / 2)
    assert row["diff_matched"][0] == pytest.approx(((0.5 - 0.1) + (0.4 - 0.2)) / 2)
    runs[0] = _stage_run("sft", 0, [0.5, 0.8], [2.2, 2.5])  # now SFT matches at its first point
    [row] = stage_rows(runs)
    assert row["forget_sft_matched"][0] == pytest.approx((0.2 + 0.4) / 2)
    assert row["acc_sft_matched"][0] == pytest.approx((0.5 + 0.6) / 2)


def test_stages_preset_pairs_sft_and_rl_arms_from_identical_pretraining() -> None:
    from sparsecl.config import arm_configs, load_experiment

    data, arms = load_experiment(None, [], "stages")
    cfgs = arm_configs(data, arms)
    assert len(cfgs) == 12 and {c.seed for c in cfgs} == {0, 1, 2}
    by = {(c.schedule[-1].objective, c.sparse.density, c.seed): c for c in cfgs}
    for (obj, dens, seed), c in by.items():
        if obj == "sft":
            rl = by[("rl", dens, seed)]
            head = [(p.domains, p.steps, p.objective) for p in c.schedule[:-1]]
            assert head == [(p.domains, p.steps, p.objective) for p in rl.schedule[:-1]]
            assert c.schedule[-1].steps == rl.schedule[-1].steps and c.data == rl.data
    assert {d for _, d, _ in by} == {1.0, 0.1}


def test_sft_and_rl_use_the_runs_bpe_tokenizer(tmp_path: Path) -> None:
    """With a BPE tokenizer, SFT targets are the response's BPE tokens and sampling decodes through it."""
    pytest.importorskip("tokenizers")
    from sparsecl.data.tokenizer import train_bpe

    tok = train_bpe(iter([p + r for p, r in TASKS["facts_qa"].make(20_000)]), 300)
    prompt, response = "colour of dorev? ", "amber"
    x, y = sft_batch([(prompt, response)], 16, tok)
    kept = y[0][y[0] != IGNORE].tolist()
    assert kept == [*tok.encode(response).tolist(), DOC_SEP]
    assert tok.decode(kept[:-1]) == response
    cfg = _stage_config()
    cfg["data"]["tokenizer"] = {"kind": "bpe", "vocab_size": 300}
    [s] = run_experiment([build_config(cfg)], tmp_path, progress_bar=False)
    assert s.tokenizer["kind"] == "bpe" and s.stages["objectives"] == ["lm", "sft", "rl"]
    assert 1.0 <= s.stages["objective_stats"][2]["completion_length"] <= 4.0 and len(s.stages["task_accuracy"]) == 4
