"""Supervised fine-tuning: next-token loss on the response tokens of prompt/response pairs only."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sparsecl.data.tokenizer import BYTE, DOC_SEP, Tokenizer
from sparsecl.rng import keyed_generator
from sparsecl.train.objectives.base import Objective, StepLoss

if TYPE_CHECKING:
    from sparsecl.data.domains import Domain
    from sparsecl.train.trainer import Trainer

IGNORE = -100
"""Target value F.cross_entropy skips (its default ignore_index): prompt and padding positions."""


def pair_tokens(prompt: str, response: str, block: int, tok: Tokenizer = BYTE) -> tuple[list[int], int]:
    """prompt + response + end-of-answer as tokens (prompt and response tokenized apart, so the boundary is a
    token boundary), cut from the left to block + 1; and where the response starts."""
    p, r = [int(t) for t in tok.encode(prompt)], [*(int(t) for t in tok.encode(response)), DOC_SEP]
    seq = p + r
    cut = max(0, len(seq) - (block + 1))
    return seq[cut:], max(0, len(p) - cut)


def sft_batch(pairs: list[tuple[str, str]], block: int, tok: Tokenizer = BYTE) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets (B, block): targets are IGNORE wherever the predicted token is not a response token."""
    x = torch.full((len(pairs), block), DOC_SEP, dtype=torch.long)
    y = torch.full((len(pairs), block), IGNORE, dtype=torch.long)
    for b, (prompt, response) in enumerate(pairs):
        seq, start = pair_tokens(prompt, response, block, tok)
        t = torch.tensor(seq, dtype=torch.long)
        n = len(seq) - 1
        x[b, :n] = t[:-1]
        y[b, :n] = t[1:]
        y[b, :max(0, start - 1)] = IGNORE  # position j predicts token j + 1: keep only response tokens
    return x, y


def draw_pairs(domains: list[Domain], n: int, gen: torch.Generator) -> list[tuple[str, str]]:
    """n training pairs: each picks a task domain uniformly (a mixture), then a pair.

    Domains without pairs (e.g. earlier LM domains a method such as joint adds to the phase) are skipped;
    the config guarantees that the phase's own domains are tasks."""
    domains = [d for d in domains if d.pairs]
    out = []
    for _ in range(n):
        d = domains[int(torch.randint(len(domains), (1,), generator=gen))]
        train = d.pairs["train"]  # type: ignore[index]
        out.append(train[int(torch.randint(len(train), (1,), generator=gen))])
    return out


class SFT(Objective):
    name = "sft"

    def step_loss(self, trainer: Trainer, domains: list[str], phase: int, step: int) -> StepLoss:
        gen = keyed_generator(trainer.cfg.seed, "train", phase, step)
        pairs = draw_pairs([trainer.domains[d] for d in domains], trainer.cfg.train.batch_size, gen)
        x, y = trainer.share(*sft_batch(pairs, trainer.cfg.model.block_size, trainer.tokenizer), ignore=IGNORE)
        x, y = x.to(trainer.device), y.to(trainer.device)
        return StepLoss(trainer.method.training_loss(trainer, x, y), int((y != IGNORE).sum()), batch=(x, y))
