"""Documents of a domain one at a time, so that a corpus larger than RAM tokenizes in bounded memory.

``txt``, ``dir`` and ``jsonl`` files are read incrementally with the same document rules as the list loaders
in ``sparsecl.data.domains`` (blank-line blocks, whole files, one record per line); every other source is
small enough to come from ``load_documents``. Deduplication happens downstream, by document hash.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from sparsecl.config import DomainSpec
from sparsecl.data.domains import load_documents
from sparsecl.errors import UserError

STREAMED = ("txt", "dir", "jsonl")


def local_path(spec: DomainSpec) -> Path:
    """The domain's file or folder, checked to exist (same messages as load_documents)."""
    where = f"data.domains.{spec.name}.path"
    path = Path(spec.path).expanduser()
    if spec.source == "dir" and not path.is_dir():
        raise UserError(f"config field '{where}': folder '{spec.path}' does not exist; point it at a folder of "
                        f"text files")
    if spec.source != "dir" and not path.is_file():
        raise UserError(f"config field '{where}': file '{spec.path}' does not exist; point it at a "
                        f".{spec.source} file")
    return path


def _iter_txt(path: Path) -> Iterator[str]:
    cur: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.rstrip("\r\n")
            if line.strip():
                cur.append(line)
            elif cur:
                yield "\n".join(cur)
                cur = []
    if cur:
        yield "\n".join(cur)


def dir_files(path: Path) -> list[Path]:
    """Non-hidden files under a folder, in sorted order."""
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def _iter_dir(path: Path) -> Iterator[str]:
    for f in dir_files(path):
        text = f.read_text(encoding="utf-8", errors="replace").strip()
        if text and "\x00" not in text:
            yield text


def _iter_jsonl(path: Path, field: str) -> Iterator[str]:
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
                yield rec[field]


def iter_documents(spec: DomainSpec) -> Iterator[str]:
    """The domain's documents in source order, NULs removed and capped at max_bytes; not deduplicated."""
    if spec.source not in STREAMED:
        yield from load_documents(spec)
        return
    path = local_path(spec)
    docs = (_iter_dir(path) if spec.source == "dir" else _iter_txt(path) if spec.source == "txt"
            else _iter_jsonl(path, spec.text_field))
    size = 0
    for d in docs:
        if spec.max_bytes and size >= spec.max_bytes:
            return
        d = d.replace("\x00", "")
        size += len(d.encode("utf-8")) + 1
        yield d
