"""Built-in and local-file domains, the hash split, and the Domain object the trainer consumes."""

from __future__ import annotations

import hashlib
import json
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparsecl.config import DataConfig, DomainSpec
from sparsecl.data import synthetic
from sparsecl.data.tokenizer import BYTE, Tokenizer
from sparsecl.errors import UserError

DEFAULT_BYTES = 1_000_000


def python_stdlib(target_bytes: int) -> list[str]:
    """Top-level .py files of this interpreter's standard library, split into blank-line-separated chunks.

    Files are read in sorted order so the text is the same on every machine with the same Python.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    size = 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for chunk in text.split("\n\n\n"):
            chunk = chunk.strip("\n")
            if len(chunk) < 40:
                continue
            docs.append(chunk)
            size += len(chunk) + 1
            if size >= target_bytes:
                return docs
    return docs


@dataclass(frozen=True)
class Builtin:
    make: Callable[[int], list[str]]
    synthetic: bool
    description: str


BUILTINS: dict[str, Builtin] = {
    "code": Builtin(python_stdlib, False, "Python standard-library source of this interpreter"),
    "arith": Builtin(synthetic.arithmetic, True, "multi-digit addition/subtraction with worked solutions"),
    "dyck": Builtin(synthetic.dyck, True, "balanced strings over 4 bracket types, with nesting depth"),
    "facts": Builtin(synthetic.facts, True, "key-value recall over a fixed pool of invented entities"),
    "cipher": Builtin(synthetic.cipher, True, "Caesar-shifted pseudo-word sentences"),
}


def _read_txt(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    docs, cur = [], []
    for line in text.splitlines():
        if line.strip():
            cur.append(line)
        elif cur:
            docs.append("\n".join(cur))
            cur = []
    if cur:
        docs.append("\n".join(cur))
    return docs


def _read_dir(path: Path) -> list[str]:
    docs = []
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        text = f.read_text(encoding="utf-8", errors="replace").strip()
        if text and "\x00" not in text:
            docs.append(text)
    return docs


def _read_jsonl(path: Path, field: str) -> list[str]:
    docs = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove that line") from e
            if not isinstance(rec, dict) or field not in rec:
                raise UserError(f"{path}:{lineno}: no field '{field}'; set the domain's text_field to the "
                                f"field that holds the text")
            if not isinstance(rec[field], str):
                raise UserError(f"{path}:{lineno}: field '{field}' is not a string")
            if rec[field].strip():
                docs.append(rec[field])
    return docs


def load_documents(spec: DomainSpec) -> list[str]:
    """The domain's documents, deduplicated, in source order; errors name the domain and the fix."""
    where = f"data.domains.{spec.name}"
    if spec.source == "builtin":
        if spec.name not in BUILTINS:
            raise UserError(f"config field '{where}': '{spec.name}' is not a built-in domain; choose from "
                            f"{sorted(BUILTINS)} or give source and path for a local file")
        docs = BUILTINS[spec.name].make(spec.max_bytes or DEFAULT_BYTES)
    else:
        path = Path(spec.path).expanduser()
        if spec.source == "dir":
            if not path.is_dir():
                raise UserError(f"config field '{where}.path': folder '{spec.path}' does not exist; "
                                f"point it at a folder of text files")
            docs = _read_dir(path)
        else:
            if not path.is_file():
                raise UserError(f"config field '{where}.path': file '{spec.path}' does not exist; "
                                f"point it at a .{spec.source} file")
            docs = _read_txt(path) if spec.source == "txt" else _read_jsonl(path, spec.text_field)
        docs = [d.replace("\x00", "") for d in docs]
        if spec.max_bytes:
            kept, size = [], 0
            for d in docs:
                if size >= spec.max_bytes:
                    break
                kept.append(d)
                size += len(d.encode("utf-8")) + 1
            docs = kept
    seen: set[str] = set()
    unique = [d for d in docs if not (d in seen or seen.add(d))]
    if not unique:
        raise UserError(f"config field '{where}': domain '{spec.name}' is empty (no documents found); "
                        f"check its path and format")
    return unique


def doc_digest(doc: str, salt: str) -> bytes:
    """SHA-256 of the salted document: identical documents share it, so it both splits and deduplicates."""
    return hashlib.sha256((salt + "\x1f" + doc).encode("utf-8")).digest()


def is_val_digest(digest: bytes, val_fraction: float) -> bool:
    return int.from_bytes(digest[:8], "little") / 2**64 < val_fraction


def is_val(doc: str, salt: str, val_fraction: float) -> bool:
    """Deterministic split by document hash: identical documents always land on the same side."""
    return is_val_digest(doc_digest(doc, salt), val_fraction)


def split_documents(docs: list[str], salt: str, val_fraction: float) -> tuple[list[str], list[str]]:
    train, val = [], []
    for d in docs:
        (val if is_val(d, salt, val_fraction) else train).append(d)
    return train, val


@dataclass
class Domain:
    name: str
    train: np.ndarray  # token stream (a read-only memory map of the token cache), documents separated by DOC_SEP
    val: np.ndarray
    n_train_docs: int
    n_val_docs: int
    tokenizer: Tokenizer = BYTE
    """The tokenizer that produced the streams (shared by every domain of a run)."""


def load_domain(spec: DomainSpec, data: DataConfig, min_tokens: int, tokenizer: Tokenizer = BYTE) -> Domain:
    from sparsecl.data.cache import token_splits

    streams, meta = token_splits(spec, data, tokenizer)
    tr, va = streams["train"], streams["val"]
    for part, arr in (("train", tr), ("validation", va)):
        if len(arr) < min_tokens:
            raise UserError(f"config field 'data.domains.{spec.name}': its {part} split has {len(arr)} tokens, "
                            f"fewer than one context window ({min_tokens}); add text or raise "
                            f"data.val_fraction / lower model.block_size")
    return Domain(spec.name, tr, va, meta["train"]["docs"], meta["val"]["docs"], tokenizer)


def load_domains(data: DataConfig, block_size: int, tokenizer: Tokenizer | None = None) -> dict[str, Domain]:
    """Every domain, tokenized through the token cache; ``tokenizer`` is a run's saved one (resume, probes),
    None means the configured one (a BPE is trained on the training splits, or taken from the cache)."""
    from sparsecl.data.cache import run_tokenizer

    tok = tokenizer if tokenizer is not None else run_tokenizer(data)
    return {s.name: load_domain(s, data, block_size + 1, tok) for s in data.domains}
