"""Token batches: random training windows keyed by (seed, phase, step), fixed validation windows.

A training batch depends only on (seed, phase, step, domains), never on RNG state carried between steps,
so a resumed run draws exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from sparsecl.data.cache import read_window


def step_generator(seed: int, *key: object) -> torch.Generator:
    digest = hashlib.sha256("/".join(map(str, (seed, *key))).encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


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


def val_windows(stream: np.ndarray, n: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to n non-overlapping windows from the start of the validation stream (fewer if it is short)."""
    n = max(1, min(n, (len(stream) - 1) // block))
    arr = np.stack([read_window(stream, i * block, block + 1) for i in range(n)]).astype(np.int64)
    t = torch.from_numpy(arr)
    return t[:, :-1], t[:, 1:]
