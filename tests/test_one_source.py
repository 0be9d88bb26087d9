"""One implementation per concept: the LM loss and the per-sequence Fisher are each computed by one function that
every user (trainer, methods, probes, evaluation) calls."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest
import torch
from methods_util import make_trainer, tiny_config

from sparsecl.methods.common import keyed, trainable
from sparsecl.model.gpt import lm_loss
from sparsecl.probes.context import ProbeContext
from sparsecl.probes.plasticity import fisher

torch.set_num_threads(1)
SRC = Path(__file__).resolve().parents[1] / "src" / "sparsecl"


def test_lm_loss_by_hand_with_ignored_positions_and_sum() -> None:
    """Two positions of a 2-token vocabulary; the second target is -100 (an sft prompt position) and is skipped."""
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, -5.0]]])  # p(token 1) = 3/4 at position 0
    y = torch.tensor([[1, -100]])
    assert abs(float(lm_loss(logits, y)) + math.log(0.75)) < 1e-6
    y2 = torch.tensor([[1, 0]])
    expected = -math.log(0.75) - math.log(1 / (1 + math.exp(-10.0)))
    assert abs(float(lm_loss(logits, y2, reduction="sum")) - expected) < 1e-6
    assert abs(float(lm_loss(logits, y2)) - expected / 2) < 1e-6


def test_cross_entropy_is_called_in_one_place() -> None:
    """Every LM loss goes through ``lm_loss``; a second copy would let the numbers drift apart."""
    calls = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\bcross_entropy\(", line)]
    assert len(calls) == 1 and calls[0].startswith("model/gpt.py:"), calls


@pytest.mark.parametrize("labels", ["empirical", "sampled"])
def test_ewc_fisher_and_the_fisher_probe_agree_on_the_same_model_and_data(tmp_path: Path, labels: str) -> None:
    """EWC's phase-end Fisher and the ``fisher`` probe, given the same sequences and the same label generator, give
    the same diagonal (a sparse model: the probe reads existing entries only, EWC's are 0 elsewhere)."""
    cfg = tiny_config("ewc", {"fisher_samples": 4, "labels": labels}, density=0.5,
                      probe={"fisher_labels": labels, "noise_batch": 4})
    tr = make_trainer(cfg, tmp_path / "r")
    tr.current_domains = ["arith"]
    tr.method.end_phase(tr, 1)  # 4 samples = one chunk: rows of batch(arith, "fisher", 1, 0), labels keyed alike
    ewc = torch.cat([tr.method.fisher[n].reshape(-1) for n, _ in trainable(tr.model)]).double()
    x, y = tr.batch(["arith"], "fisher", 1, 0)
    ctx = ProbeContext(model=tr.model.eval(), cfg=cfg, windows={}, phase=1, step=0, current=["arith"],
                       learned_phase={"arith": 1}, states=lambda j: None, device=torch.device("cpu"))
    ctx.mixed_batch = lambda doms, n: (x[:n], y[:n])  # type: ignore[method-assign]
    ctx.generator = lambda *key: keyed(tr, "fisher-labels", 1, 0)  # type: ignore[method-assign]
    out = fisher(ctx)
    probe = ctx.cache[("seq_stats", labels)].fisher()
    torch.testing.assert_close(probe.float().double(), ewc, rtol=1e-6, atol=0.0)
    assert out[f"{labels}_trace"] == pytest.approx(float(ewc.sum()), rel=1e-6)
    assert out[f"{labels}_max"] == pytest.approx(float(ewc.max()), rel=1e-6)
    assert float(ewc.sum()) > 0


def test_one_fisher_label_vocabulary_and_the_old_probe_word_still_reads() -> None:
    assert tiny_config("naive", probe={"fisher_labels": "sampled"}).probe.fisher_labels == "sampled"
    assert tiny_config("naive", probe={"fisher_labels": "model"}).probe.fisher_labels == "sampled"  # older run folders
    assert tiny_config("ewc", {"labels": "sampled"}).method.params["labels"] == "sampled"


_SIGN_WORDING = re.compile(r"([+-]|\bpositive|\bnegative)\s*(=|means)\s*(\w+\s+)?forg\w*", re.IGNORECASE)


def _strings_outside_docstrings(tree: ast.AST) -> list[str]:
    """The string constants a module shows (docstrings are prose and may word a sign in a sentence)."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_forgetting_signs_are_worded_once_in_labels() -> None:
    """Every table, figure, report and summary.json reads a forgetting sign from ``stats.labels``, where each sign
    has one wording; README shows the same words."""
    from sparsecl.stats import labels

    shown = [f"{p.relative_to(SRC)}: {s!r}" for p in SRC.rglob("*.py") if p.name != "labels.py"
             for s in _strings_outside_docstrings(ast.parse(p.read_text())) if _SIGN_WORDING.search(s)]
    assert shown == [], shown
    texts = [t for m in labels.MEASURES.values() for t in (m.label, m.column, m.short, m.abbrev, m.convention or "")]
    texts += [*labels.SIGN_CONVENTIONS.values(), labels.SIGNS_NOTE, labels.PHASE_FORGETTING, labels.forgot_more("a")]
    wordings = {m.group(0).lower() for t in texts for m in _SIGN_WORDING.finditer(t)}
    assert wordings == {"+ = forgot", "- = forgot", "positive = forgot", "negative = forgot", "+ = a forgot"}
    readme = (SRC.parents[1] / "README.md").read_text().replace("\u2212", "-")
    assert {m.group(0).lower() for m in _SIGN_WORDING.finditer(readme)} <= wordings
    assert "- = forgot" in readme and "+ = forgot" in readme
