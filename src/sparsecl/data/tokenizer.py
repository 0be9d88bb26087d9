"""Byte-level tokenizer: vocab 256, token = byte, so bits per byte = nats per token / ln 2."""

from __future__ import annotations

import numpy as np

VOCAB_SIZE = 256
DOC_SEP = 0  # NUL never occurs in text documents; it marks document boundaries in a token stream


def encode(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def decode(tokens: np.ndarray | list[int]) -> str:
    return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")


def encode_docs(docs: list[str]) -> np.ndarray:
    """Concatenate documents with a separator token after each one."""
    parts: list[np.ndarray] = []
    sep = np.array([DOC_SEP], dtype=np.uint8)
    for d in docs:
        parts.append(encode(d))
        parts.append(sep)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)
