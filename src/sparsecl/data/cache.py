"""Token caches: each domain's tokenized splits, written once to flat files and memory-mapped by every run.

A cache entry is a folder ``<cache>/tokens/<key>/`` with ``train.bin``, ``val.bin`` (uint8 for the byte
tokenizer, uint16 up to 65,536 ids, else uint32) and ``meta.json`` (token counts and CRC-32 checksums). The key
hashes the domain spec, the source identity (below), the split salt and fraction, and the tokenizer's full
JSON. Source identity: for ``txt``/``jsonl``/``dir`` sources each file's path, size and mtime plus a SHA-256
of each file's first and last MiB (so starting a run on a cached corpus never rereads it); for every other
source (built-ins, ...) a SHA-256 of the documents themselves.

Safety: an entry is built in a uniquely named temporary folder, ``meta.json`` written last, then renamed
into place in one step; a concurrent builder that loses the rename discards its copy. An entry whose files
disagree with its meta (length; checksum whenever a file's mtime differs from the meta's) is moved aside and
rebuilt, never used. Building streams the
source (``sparsecl.data.streaming``) through the tokenizer in batches, so memory stays flat: about 70 bytes
per distinct document (the deduplication set) plus one batch. Training reads windows with ``read_window``.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from sparsecl.config import DataConfig, DomainSpec
from sparsecl.data.domains import doc_digest, is_val_digest
from sparsecl.data.streaming import STREAMED, dir_files, iter_documents, local_path
from sparsecl.data.tokenizer import BYTE, Tokenizer, load_file, train_bpe
from sparsecl.errors import UserError
from sparsecl.store.atomic import atomic_write_json, atomic_write_text

FORMAT = 2
"""Bumped whenever the layout or the meaning of a cache entry changes."""
CACHE_ENV = "SPARSECL_CACHE_DIR"
BATCH_BYTES = 4 << 20
"""Text tokenized per batch while building (bounds memory)."""
_SAMPLE = 1 << 20
_CHUNK = 16 << 20


def cache_root(data: DataConfig) -> Path:
    """data.cache_dir, else $SPARSECL_CACHE_DIR, else ~/.cache/sparsecl."""
    return Path(data.cache_dir or os.environ.get(CACHE_ENV) or "~/.cache/sparsecl").expanduser()


def _file_identity(path: Path) -> list[Any]:
    st = path.stat()
    h = hashlib.sha256()
    with path.open("rb") as fh:
        h.update(fh.read(_SAMPLE))
        if st.st_size > _SAMPLE:
            fh.seek(max(_SAMPLE, st.st_size - _SAMPLE))
            h.update(fh.read(_SAMPLE))
    return [str(path.resolve()), st.st_size, st.st_mtime_ns, h.hexdigest()]


def source_identity(spec: DomainSpec) -> Any:
    """What the domain's text is, cheaply: file identities for local files, a hash of the documents otherwise."""
    if spec.source in STREAMED:
        path = local_path(spec)
        return [_file_identity(f) for f in dir_files(path)] if spec.source == "dir" else _file_identity(path)
    h = hashlib.sha256()
    for d in iter_documents(spec):
        h.update(hashlib.sha256(d.encode("utf-8")).digest())
    return h.hexdigest()


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([FORMAT, *parts], sort_keys=True, default=str).encode()).hexdigest()[:32]


def unique_documents(spec: DomainSpec, salt: str) -> Iterator[tuple[str, bytes]]:
    """(document, digest) for each distinct document in source order; the digest decides its split."""
    seen: set[bytes] = set()
    for d in iter_documents(spec):
        h = doc_digest(d, salt)
        if h[:16] not in seen:
            seen.add(h[:16])
            yield d, h


# ------------------------------------------------------------------ the run's tokenizer
def run_tokenizer(data: DataConfig) -> Tokenizer:
    """The configured tokenizer; a BPE is trained on the training splits once and shared through the cache."""
    t = data.tokenizer
    if t.kind == "byte":
        return BYTE
    if t.kind == "file":
        return load_file(t.path)
    key = _key("bpe", asdict(t), data.split_salt, data.val_fraction,
               [[vars(s), source_identity(s)] for s in data.domains])
    path = cache_root(data) / "tokenizers" / f"{key}.json"
    if path.is_file():
        try:
            tok = load_file(path, "bpe", str(path), t.vocab_size)
            tok.source = ""  # as if trained here: the summary does not depend on the cache
            return tok
        except UserError:
            pass  # a damaged file: train again and replace it
    tok = train_bpe(_training_texts(data), t.vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, tok.to_json())
    return tok


def _training_texts(data: DataConfig) -> Iterator[str]:
    """Training-split documents of every domain in order, each domain capped at train_bytes / n_domains."""
    cap = data.tokenizer.train_bytes // len(data.domains) if data.tokenizer.train_bytes else 0
    for s in data.domains:
        size = 0
        for d, h in unique_documents(s, data.split_salt):
            if is_val_digest(h, data.val_fraction):
                continue
            if cap and size >= cap:
                break
            size += len(d.encode("utf-8"))
            yield d


# ------------------------------------------------------------------ token caches
class _Writer:
    """Appends token arrays to a file, counting tokens and bytes and keeping a running CRC-32."""

    def __init__(self, path: Path, tok: Tokenizer) -> None:
        self.fh: BinaryIO = path.open("wb")
        self.tok, self.tokens, self.bytes, self.docs, self.crc = tok, 0, 0, 0, 0
        self.text_bytes, self.shortest, self.longest = 0, 0, 0  # UTF-8 bytes of the documents themselves
        self.batch: list[str] = []
        self.batch_bytes = 0

    def add(self, doc: str, n_bytes: int) -> None:
        self.batch.append(doc)
        self.batch_bytes += len(doc)
        self.docs += 1
        self.text_bytes += n_bytes
        self.shortest = n_bytes if self.docs == 1 else min(self.shortest, n_bytes)
        self.longest = max(self.longest, n_bytes)
        if self.batch_bytes >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.batch:
            arr = np.ascontiguousarray(self.tok.encode_docs(self.batch), dtype=self.tok.dtype)
            view = arr.data.cast("B")
            self.fh.write(view)
            self.crc = zlib.crc32(view, self.crc)
            self.tokens += len(arr)
            self.bytes += len(arr) if self.tok.hf is None else int(self.tok.token_bytes[arr].sum())
            self.batch, self.batch_bytes = [], 0

    def close(self) -> dict[str, int]:
        self.flush()
        self.fh.close()
        st = os.stat(self.fh.name)
        return {"tokens": self.tokens, "bytes": self.bytes, "docs": self.docs, "crc32": self.crc,
                "mtime_ns": st.st_mtime_ns, "text_bytes": self.text_bytes, "shortest_doc_bytes": self.shortest,
                "longest_doc_bytes": self.longest}


def _build(spec: DomainSpec, data: DataConfig, tok: Tokenizer, dest: Path, key: str) -> None:
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        w = {"train": _Writer(tmp / "train.bin", tok), "val": _Writer(tmp / "val.bin", tok)}
        content = hashlib.sha256()  # the text's identity: every distinct document, NUL-terminated, in order
        for d, h in unique_documents(spec, data.split_salt):
            raw = d.encode("utf-8")
            content.update(raw)
            content.update(b"\x00")
            w["val" if is_val_digest(h, data.val_fraction) else "train"].add(d, len(raw))
        splits = {k: v.close() for k, v in w.items()}
        if not splits["train"]["docs"] + splits["val"]["docs"]:
            raise UserError(f"config field 'data.domains.{spec.name}': domain '{spec.name}' is empty (no documents "
                            f"found); check its path and format")
        atomic_write_json(tmp / "meta.json", {"format": FORMAT, "key": key, "domain": spec.name,
                                              "dtype": tok.dtype.name, "tokenizer": tok.info(),
                                              "content_sha256": content.hexdigest()[:16], **splits})
        try:
            os.rename(tmp, dest)
        except OSError:  # another process finished the same entry first: keep theirs
            if not (dest / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _crc32(path: Path) -> int:
    crc, buf = 0, bytearray(_CHUNK)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
    return crc


def _open(dest: Path, tok: Tokenizer) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """Memory maps of a complete, intact entry; None if it is missing, partial or corrupt.

    Lengths are checked every time; checksums whenever a file was modified after it was written (its mtime
    differs from the meta's), so that opening a 2 GB entry does not reread it at every start.
    """
    try:
        meta = json.loads((dest / "meta.json").read_text())
        out = {}
        for split in ("train", "val"):
            path, info = dest / f"{split}.bin", meta[split]
            st = path.stat()
            if meta["dtype"] != tok.dtype.name or st.st_size != info["tokens"] * tok.dtype.itemsize:
                return None
            if st.st_mtime_ns != info["mtime_ns"] and _crc32(path) != info["crc32"]:
                return None
            out[split] = (np.memmap(path, dtype=tok.dtype, mode="r") if info["tokens"]
                          else np.zeros(0, dtype=tok.dtype))
        return out, meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_window(stream: np.ndarray, start: int, length: int) -> np.ndarray:
    """``stream[start:start + length]``; from a token file by a positioned read, not through the mapping.

    A memory-map fault maps a whole page-cache folio (up to MBs on current kernels), so random training
    windows read through the map would grow the process's resident set towards the file size.
    """
    if isinstance(stream, np.memmap) and isinstance(stream.base, mmap.mmap) and stream.filename:
        return np.fromfile(stream.filename, dtype=stream.dtype, count=length,
                           offset=stream.offset + start * stream.itemsize)
    return stream[start:start + length]


def token_splits(spec: DomainSpec, data: DataConfig, tok: Tokenizer, identity: Any = None,
                 ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The domain's train and val token streams (read-only memory maps) and the entry's meta."""
    identity = source_identity(spec) if identity is None else identity
    key = _key("tokens", vars(spec), identity, data.split_salt, data.val_fraction, tok.fingerprint)
    dest = cache_root(data) / "tokens" / key
    if dest.exists():
        got = _open(dest, tok)
        if got is not None:
            return got
        trash = dest.parent / f".{dest.name}.bad-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(dest, trash)
        except OSError:
            pass  # another process moved it already
        shutil.rmtree(trash, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _build(spec, data, tok, dest, key)
    got = _open(dest, tok)
    if got is None:
        raise UserError(f"token cache '{dest}' could not be written intact; check free space in "
                        f"{cache_root(data)} (data.cache_dir)")
    return got
