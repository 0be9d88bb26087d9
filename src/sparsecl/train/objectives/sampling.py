"""Completions of a prompt: sampled (GRPO) or greedy (task accuracy), stopping at the end-of-answer token."""

from __future__ import annotations

import torch
from torch import nn

from sparsecl.data.tokenizer import BYTE, DOC_SEP, Tokenizer


def prompt_tokens(prompt: str, block: int, new: int, tok: Tokenizer = BYTE) -> torch.Tensor:
    """The prompt's tokens, cut from the left so that prompt + ``new`` tokens fit the context."""
    t = torch.from_numpy(tok.encode(prompt).astype("int64"))
    return t[-max(1, block - new):]


@torch.no_grad()
def complete(model: nn.Module, prompt: torch.Tensor, n: int, new: int, temperature: float | None,
             gen: torch.Generator | None = None) -> torch.Tensor:
    """(n, new) completion tokens of one prompt; greedy when temperature is None, else sampled from
    softmax(logits / temperature) with ``gen`` (a CPU generator, so CPU and CUDA draw the same tokens).
    Sequences that have produced the end-of-answer token keep running but are masked by ``valid_mask``."""
    device = next(model.parameters()).device
    seq = prompt.to(device).unsqueeze(0).repeat(n, 1)
    out = []
    for _ in range(new):
        logits = model(seq)[:, -1].float()
        if temperature is None:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / temperature, -1).cpu()
            nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1).to(device)
        out.append(nxt)
        seq = torch.cat([seq, nxt[:, None]], 1)
    return torch.stack(out, 1)


def valid_mask(completions: torch.Tensor) -> torch.Tensor:
    """True up to and including the first end-of-answer token of each row (the tokens the answer consists of)."""
    stop = (completions == DOC_SEP).long()
    before = torch.cumsum(stop, 1) - stop  # stops strictly before each position
    return before == 0


def answer_text(tokens: torch.Tensor, tok: Tokenizer = BYTE) -> str:
    """The answer a completion gives: its text before the end-of-answer token."""
    toks = tokens.tolist()
    if DOC_SEP in toks:
        toks = toks[:toks.index(DOC_SEP)]
    return tok.decode(toks)


def greedy_accuracy(model: nn.Module, pairs: list[tuple[str, str]], reward, block: int, new: int,  # noqa: ANN001
                    tok: Tokenizer = BYTE) -> float:
    """Mean reward of greedy completions (exact match: accuracy) over ``pairs``."""
    was = model.training
    model.eval()
    try:
        total = 0.0
        for prompt, response in pairs:
            c = complete(model, prompt_tokens(prompt, block, new, tok), 1, new, None)
            total += reward(answer_text(c[0], tok), response)
        return total / max(1, len(pairs))
    finally:
        model.train(was)
