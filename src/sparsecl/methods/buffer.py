"""A reservoir buffer of token sequences (Vitter's algorithm R), with optional per-slot payloads.

Every sequence seen so far has the same probability capacity / seen of being in the buffer, whatever the
order of the stream. Randomness comes from a caller-supplied generator (keyed by phase and step), so a
resumed run replaces exactly the slots an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import torch

from sparsecl.store.checkpoint import split_prefix


def token_dtype(vocab_size: int) -> torch.dtype:
    """Smallest dtype that holds every token id (safetensors stores uint8/int16/int32)."""
    if vocab_size <= 256:
        return torch.uint8
    if vocab_size <= 32768:
        return torch.int16
    return torch.int32


class ReservoirBuffer:
    """``capacity`` rows of ``seq_len`` tokens plus a group id per row and named extra tensors per row."""

    def __init__(self, capacity: int, seq_len: int, vocab_size: int) -> None:
        self.capacity, self.seq_len = capacity, seq_len
        self.tokens = torch.zeros(capacity, seq_len, dtype=token_dtype(vocab_size))
        self.group = torch.zeros(capacity, dtype=torch.int16)
        self.extra: dict[str, torch.Tensor] = {}
        self.seen = 0
        self.size = 0

    def add(self, seqs: torch.Tensor, group: int, gen: torch.Generator,
            extra: dict[str, torch.Tensor] | None = None) -> None:
        """Offer rows of ``seqs`` (n, seq_len) one by one; ``extra`` holds (n, ...) payloads per row."""
        seqs = seqs.detach().to("cpu")
        extra = {k: v.detach().to("cpu") for k, v in (extra or {}).items()}
        for k, v in extra.items():
            if k not in self.extra:
                self.extra[k] = torch.zeros(self.capacity, *v.shape[1:], dtype=v.dtype)
        for i in range(seqs.shape[0]):
            if self.size < self.capacity:
                slot = self.size
                self.size += 1
            else:
                j = int(torch.randint(self.seen + 1, (1,), generator=gen))
                slot = j if j < self.capacity else -1
            self.seen += 1
            if slot < 0:
                continue
            self.tokens[slot] = seqs[i].to(self.tokens.dtype)
            self.group[slot] = group
            for k, v in extra.items():
                self.extra[k][slot] = v[i]

    def sample_index(self, n: int, gen: torch.Generator, weights: torch.Tensor | None = None) -> torch.Tensor:
        """n slot indices, uniform over filled slots (with replacement), or by per-slot ``weights``."""
        if weights is None:
            return torch.randint(self.size, (n,), generator=gen)
        return torch.multinomial(weights[: self.size].double(), n, replacement=True, generator=gen)

    def batch(self, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets (len(idx), seq_len - 1), int64 on ``device``."""
        t = self.tokens[idx].long().to(device)
        return t[:, :-1], t[:, 1:]

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_tensors().values())

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {"tokens": self.tokens, "group": self.group}
        out.update({f"extra.{k}": v for k, v in self.extra.items()})
        return out

    def state_json(self) -> dict[str, Any]:
        return {"seen": self.seen, "size": self.size, "capacity": self.capacity, "seq_len": self.seq_len}

    def load_state(self, tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> None:
        self.seen, self.size = int(js["seen"]), int(js["size"])
        self.tokens = tensors["tokens"].clone()
        self.group = tensors["group"].clone()
        self.extra = {k: v.clone() for k, v in split_prefix(tensors, "extra.").items()}
