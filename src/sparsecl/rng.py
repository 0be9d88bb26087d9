"""Keyed random generators: a draw depends on (seed, key), never on RNG state carried between calls.

Training batches, validation windows, masks, replay samples and probe inputs all draw from a generator
derived here, so a resumed run, another process or another rank draws exactly the same numbers.
"""

from __future__ import annotations

import hashlib

import torch


def keyed_generator(seed: int, *key: object) -> torch.Generator:
    """A CPU generator seeded by SHA-256 of 'seed/key0/key1/...' (63 bits): stable across processes."""
    digest = hashlib.sha256("/".join(map(str, (seed, *key))).encode()).digest()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g
