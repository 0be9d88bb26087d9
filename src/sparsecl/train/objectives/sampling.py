"""Completions of prompts: sampled (GRPO) or greedy (task accuracy), stopping at the end-of-answer token.

Prompts of different lengths run as one batch without changing the model: each row holds its prompt from
position 0 (the absolute positions a lone prompt gets) and is padded on the right; row i reads its next-token
logits at its own last position, and causal attention never lets a position see the padding to its right. So
a row's tokens are those it gets alone (``complete``, the one-prompt reference). Rows that have produced the
end-of-answer token leave the batch; their remaining tokens are end-of-answer tokens, which ``valid_mask`` and
``answer_text`` ignore as they ignore whatever follows a lone prompt's first one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sparsecl.data.tokenizer import BYTE, DOC_SEP, Tokenizer


def prompt_tokens(prompt: str, block: int, new: int, tok: Tokenizer = BYTE) -> torch.Tensor:
    """The prompt's tokens, cut from the left so that prompt + ``new`` tokens fit the context."""
    t = torch.from_numpy(tok.encode(prompt).astype("int64"))
    return t[-max(1, block - new):]


def _next(logits: torch.Tensor, temperature: float | None, gen: torch.Generator | None) -> torch.Tensor:
    """Greedy (temperature None) or sampled from softmax(logits / T) with a CPU generator (so CPU and CUDA
    draw the same tokens)."""
    if temperature is None:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, -1).cpu()
    return torch.multinomial(probs, 1, generator=gen).squeeze(1).to(logits.device)


@torch.no_grad()
def complete(model: nn.Module, prompt: torch.Tensor, n: int, new: int, temperature: float | None,
             gen: torch.Generator | None = None) -> torch.Tensor:
    """(n, new) completion tokens of one prompt, one token per forward pass for all ``new`` tokens (the
    reference ``complete_batch`` is tested against)."""
    device = next(model.parameters()).device
    seq = prompt.to(device).unsqueeze(0).repeat(n, 1)
    out = []
    for _ in range(new):
        nxt = _next(model(seq)[:, -1].float(), temperature, gen)
        out.append(nxt)
        seq = torch.cat([seq, nxt[:, None]], 1)
    return torch.stack(out, 1)


def pad_right(prompts: list[torch.Tensor], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(len(prompts), width) rows holding each prompt from position 0, padded with end-of-answer tokens; and
    the prompts' lengths."""
    lens = torch.tensor([p.numel() for p in prompts], dtype=torch.long)
    buf = torch.full((len(prompts), width), DOC_SEP, dtype=torch.long)
    for i, p in enumerate(prompts):
        buf[i, :p.numel()] = p
    return buf, lens


@torch.no_grad()
def complete_batch(model: nn.Module, prompts: list[torch.Tensor], new: int, temperature: float | None,
                   gen: torch.Generator | None = None) -> torch.Tensor:
    """(len(prompts), new) completion tokens, all prompts in one batch (see the module docstring)."""
    device = next(model.parameters()).device
    buf, lens = pad_right(prompts, max(p.numel() for p in prompts) + new)
    buf, lens = buf.to(device), lens.to(device)
    out = torch.full((len(prompts), new), DOC_SEP, dtype=torch.long, device=device)
    active = torch.arange(len(prompts), device=device)
    for t in range(new):
        pos = lens[active] + t - 1  # each active row's last filled position
        logits = model(buf[active, :int(pos.max()) + 1])
        nxt = _next(logits[torch.arange(active.numel(), device=device), pos].float(), temperature, gen)
        buf[active, pos + 1] = nxt
        out[active, t] = nxt
        active = active[nxt != DOC_SEP]
        if not active.numel():
            break
    return out


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


def greedy_accuracy(model: nn.Module, pairs: list[tuple[str, str]], reward: Callable[[str, str], float],
                    block: int, new: int, tok: Tokenizer = BYTE, batch: int = 64) -> float:
    """Mean reward of greedy completions (exact match: accuracy) over ``pairs``, ``batch`` prompts at a time."""
    was = model.training
    model.eval()
    try:
        total = 0.0
        for i in range(0, len(pairs), batch):
            chunk = pairs[i:i + batch]
            c = complete_batch(model, [prompt_tokens(p, block, new, tok) for p, _ in chunk], new, None)
            total += sum(reward(answer_text(row, tok), r) for row, (_, r) in zip(c.cpu(), chunk, strict=True))
        return total / max(1, len(pairs))
    finally:
        model.train(was)
