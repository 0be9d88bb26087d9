"""One implementation per concept: the LM loss and the per-sequence Fisher are each computed by one function that
every user (trainer, methods, probes, evaluation) calls."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from sparsecl.model.gpt import lm_loss

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
