"""Token batches: random training windows keyed by (seed, phase, step), fixed validation windows keyed by
(seed, domain).

A training batch depends only on (seed, phase, step, domains), never on RNG state carried between steps,
so a resumed run draws exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import numpy as np
import torch

from sparsecl.data.cache import read_window
from sparsecl.rng import keyed_generator


def sample_windows(streams: list[np.ndarray], batch: int, block: int, gen: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """B windows of block+1 tokens; each sequence picks one stream uniformly (a mixture), then a start.

    Returns inputs and next-token targets, both (B, block) int64.
    """
    which = torch.randint(len(streams), (batch,), generator=gen)
    rows = []
    for b in range(batch):
        s = streams[int(which[b])]
        start = int(torch.randint(len(s) - block, (1,), generator=gen))
        rows.append(read_window(s, start, block + 1))
    arr = torch.from_numpy(np.stack(rows).astype(np.int64))
    return arr[:, :-1], arr[:, 1:]


def val_starts(length: int, n: int, block: int, gen: torch.Generator) -> np.ndarray:
    """Start offsets of n non-overlapping validation windows spread over a stream of ``length`` tokens.

    Stratified: the stream is cut into n equal strata and each holds one window (block + 1 tokens) at a
    seeded offset, so the sample covers the whole stream rather than its first documents. n is capped at the
    number of windows that fit; when exactly that many fit, the strata tile the stream and no offset is drawn.
    Starts ascend, and window i's targets lie in stratum i, so no target token is scored twice.
    """
    n = max(1, min(n, (length - 1) // block))
    stratum = (length - 1) // n  # >= block
    offsets = torch.randint(stratum - block + 1, (n,), generator=gen).numpy()
    return np.arange(n, dtype=np.int64) * stratum + offsets


def val_windows(stream: np.ndarray, n: int, block: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets, (n, block) int64 each, of the windows ``val_starts`` picks (fewer if the stream is
    short)."""
    starts = val_starts(len(stream), n, block, gen)
    arr = np.stack([read_window(stream, int(s), block + 1) for s in starts]).astype(np.int64)
    t = torch.from_numpy(arr)
    return t[:, :-1], t[:, 1:]


def eval_window_count(tokens: int, block: int) -> int:
    """Windows that score at least ``tokens`` target tokens (block targets each)."""
    return max(1, -(-tokens // block))


def domain_val_windows(streams: dict[str, np.ndarray], seed: int, tokens: int, block: int
                       ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every domain's fixed validation sample, keyed by (run seed, domain name): the same windows in every
    phase, after a resume and in `sparsecl probe`, whatever other domains the run has."""
    n = eval_window_count(tokens, block)
    return {name: val_windows(s, n, block, keyed_generator(seed, "val", name)) for name, s in streams.items()}
