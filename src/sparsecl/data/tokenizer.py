"""Tokenizers: bytes (vocab 256) or a byte-level BPE, with id 0 separating documents in every token stream.

Every tokenizer here is byte-level: each id stands for a fixed byte string, so any text encodes (byte fallback)
and the UTF-8 bytes a token covers come from a per-id table. Bits per byte (DESIGN §10) is then exact for any
tokenizer: summed token NLL / (ln 2 * summed bytes of the scored tokens). The separator counts as one byte,
the NUL the byte tokenizer writes for it, so byte and BPE streams of the same documents cover the same bytes.
Hugging Face tokenizers keep their own ids shifted up by one, so that id 0 is the separator everywhere.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sparsecl.config.sections import BYTE_TOKENS
from sparsecl.errors import ConfigError, UserError

if TYPE_CHECKING:
    import torch  # lazy: data/ loads and tokenizes text without torch

    from sparsecl.config import TokenizerConfig

VOCAB_SIZE = BYTE_TOKENS
DOC_SEP = 0  # NUL never occurs in text documents; it marks document boundaries in a token stream
TOKENIZER_FILE = "tokenizer.json"
"""Where a run folder keeps its tokenizer (not written for the byte tokenizer, which has no state)."""
_PROBE_TEXT = "Hello, World!\t1+1=2\n" + "".join(map(chr, range(1, 128))) + " é ß 漢字 🙂 \u200b"
"""Round-trip check for a supplied tokenizer: ASCII controls, accents, CJK, an emoji, a zero-width space."""


def encode(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def decode(tokens: np.ndarray | list[int]) -> str:
    return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")


def encode_docs(docs: list[str]) -> np.ndarray:
    """Byte tokens of the documents, a separator token after each one."""
    return BYTE.encode_docs(docs)


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every id: uint8 for bytes, uint16 up to 65536, else uint32."""
    if vocab_size <= 256:
        return np.dtype(np.uint8)
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def _hf_module() -> Any:
    try:
        import tokenizers  # optional: tokenizers (sparsecl[bpe])
    except ImportError as e:
        raise ConfigError("data.tokenizer.kind", "needs the Hugging Face 'tokenizers' package",
                          "pip install 'sparsecl[bpe]' or use kind byte") from e
    return tokenizers


class Tokenizer:
    """The byte tokenizer (``hf`` None) or a Hugging Face byte-level tokenizer whose ids are shifted by one."""

    def __init__(self, kind: str, vocab_size: int, hf: Any = None, source: str = "") -> None:
        self.kind, self.vocab_size, self.hf, self.source = kind, vocab_size, hf, source
        self.dtype = token_dtype(vocab_size)
        self.token_bytes = np.ones(vocab_size, dtype=np.int64) if hf is None else _hf_token_bytes(hf, vocab_size)
        """UTF-8 bytes each id decodes to (the separator counts one)."""
        text = "byte" if hf is None else hf.to_str()
        self.fingerprint = hashlib.sha256(text.encode("utf-8")).hexdigest()
        """Identity of the exact tokenizer (its whole JSON), part of every token cache key."""

    def encode(self, text: str) -> np.ndarray:
        if self.hf is None:
            return encode(text)
        return (np.asarray(self.hf.encode(text).ids, dtype=np.int64) + 1).astype(self.dtype)

    def encode_docs(self, docs: list[str]) -> np.ndarray:
        """Tokens of the documents in order, a separator after each one."""
        if not docs:
            return np.zeros(0, dtype=self.dtype)
        if self.hf is None:
            return np.frombuffer("\x00".join(docs).encode("utf-8") + b"\x00", dtype=np.uint8)
        encs = self.hf.encode_batch_fast(docs) if hasattr(self.hf, "encode_batch_fast") else self.hf.encode_batch(docs)
        parts = []
        for e in encs:
            parts.append(np.asarray(e.ids, dtype=np.int64) + 1)
            parts.append(np.zeros(1, dtype=np.int64))
        return np.concatenate(parts).astype(self.dtype)

    def decode(self, ids: np.ndarray | list[int]) -> str:
        """Text of the ids; separators become NUL, as in the byte tokenizer."""
        if self.hf is None:
            return decode(ids)
        out: list[str] = []
        run: list[int] = []
        for i in (int(t) for t in ids):
            if i == DOC_SEP:
                out.append(self.hf.decode(run, skip_special_tokens=False))
                run = []
            else:
                run.append(i - 1)
        out.append(self.hf.decode(run, skip_special_tokens=False))
        return "\x00".join(out)

    def target_bytes(self, ids: torch.Tensor) -> torch.Tensor:
        """Per-token UTF-8 byte counts, same shape as ``ids``: what bits per byte divides by."""
        import torch  # lazy: data/ loads and tokenizes text without torch

        return torch.from_numpy(self.token_bytes)[ids.long()]

    def to_json(self) -> str:
        if self.hf is None:
            raise ValueError("the byte tokenizer has no file")
        return self.hf.to_str(pretty=True)

    def info(self) -> dict[str, Any]:
        """What the summary records about the tokenizer."""
        return {"kind": self.kind, "vocab_size": self.vocab_size, "fingerprint": self.fingerprint[:16],
                **({"source": self.source} if self.source else {})}


BYTE = Tokenizer("byte", VOCAB_SIZE)


def _hf_token_bytes(hf: Any, vocab_size: int) -> np.ndarray:
    """Byte length of every shifted id; raises ValueError when a vocabulary token is not byte-level."""
    alphabet = set(_hf_module().pre_tokenizers.ByteLevel.alphabet())
    added = {t.content: t for t in hf.get_added_tokens_decoder().values()}
    table = np.zeros(vocab_size, dtype=np.int64)
    table[DOC_SEP] = 1
    for tok, i in hf.get_vocab(with_added_tokens=True).items():
        if tok in added:  # matched literally in the text, so it covers its own UTF-8 bytes
            table[i + 1] = len(tok.encode("utf-8"))
        elif all(c in alphabet for c in tok):  # ByteLevel: one character per byte
            table[i + 1] = len(tok)
        else:
            raise ValueError(f"token {tok!r} is not a byte-level token")
    return table


def from_hf(hf: Any, kind: str, vocab_size: int = 0, source: str = "", field: str = "data.tokenizer.path",
            ) -> Tokenizer:
    """Wrap a Hugging Face tokenizer after checking that it is byte-level and round-trips any text."""
    hf.encode_special_tokens = True  # text that spells a special token is encoded as text
    vocab_size = max(vocab_size, hf.get_vocab_size(with_added_tokens=True) + 1)
    try:
        tok = Tokenizer(kind, vocab_size, hf, source)
        ids = tok.encode(_PROBE_TEXT)
        ok = tok.decode(ids) == _PROBE_TEXT and int(tok.token_bytes[ids].sum()) == len(_PROBE_TEXT.encode())
    except ValueError as e:
        ok, why = False, str(e)
    else:
        why = "it does not reproduce text byte for byte"
    if not ok:
        raise ConfigError(field, f"tokenizer '{source}' has no byte fallback ({why})",
                          "use a byte-level tokenizer (ByteLevel pre-tokenizer and decoder, no normalizer), "
                          "e.g. one trained by data.tokenizer.kind=bpe")
    return tok


def load_file(path: str | Path, kind: str = "file", field: str = "data.tokenizer.path", vocab_size: int = 0,
              ) -> Tokenizer:
    """A tokenizer.json (padded to ``vocab_size`` ids); one clear error if it is missing, does not parse or is
    not byte-level."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(field, f"tokenizer file '{path}' does not exist", "point it at a tokenizer.json")
    tk = _hf_module()
    try:
        hf = tk.Tokenizer.from_file(str(p))
    except Exception as e:  # the Rust loader raises bare Exceptions for any malformed file
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(field, f"tokenizer file '{path}' does not load ({first})",
                          "give a Hugging Face tokenizer.json (Tokenizer.save)") from e
    return from_hf(hf, kind, vocab_size, source=str(p), field=field)


def train_bpe(texts: Any, vocab_size: int) -> Tokenizer:
    """Byte-level BPE on an iterable of training texts: 256 byte tokens + separator + merges = vocab_size.

    HF's trainer breaks count ties by the pair itself, so the merges depend only on the texts and their order.
    If the text runs out of merges first, the remaining ids stay unused (the model keeps vocab_size rows).
    """
    tk = _hf_module()
    hf = tk.Tokenizer(tk.models.BPE())
    hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size - 1, show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer)
    return from_hf(hf, "bpe", vocab_size, field="data.tokenizer")


def tokenizer_vocab_size(cfg: TokenizerConfig) -> int:
    """Vocabulary the model needs for this tokenizer config (loads a supplied file to count it)."""
    if cfg.kind == "byte":
        return VOCAB_SIZE
    if cfg.kind == "bpe":
        return cfg.vocab_size
    return load_file(cfg.path).vocab_size


def saved_tokenizer(run_dir: Path | None, cfg: TokenizerConfig) -> Tokenizer | None:
    """The tokenizer a run folder saved (resume, probes), or None if it has none yet."""
    if cfg.kind == "byte":
        return BYTE
    if run_dir is None or not (run_dir / TOKENIZER_FILE).is_file():
        return None
    tok = load_file(run_dir / TOKENIZER_FILE, cfg.kind, str(run_dir / TOKENIZER_FILE),
                    cfg.vocab_size if cfg.kind == "bpe" else 0)
    tok.source = cfg.path
    return tok


def check_vocab(tok: Tokenizer, model_vocab: int) -> None:
    if tok.vocab_size > model_vocab:
        raise UserError(f"config field 'model.vocab_size': {model_vocab} is smaller than the tokenizer's "
                        f"vocabulary ({tok.vocab_size}); remove model.vocab_size or raise it")
