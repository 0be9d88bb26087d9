"""Cross-domain hygiene: exact duplicate documents across domains, and validation text seen in training.

Overlap is measured on word 13-grams (whitespace-split words, n-grams inside one document), the contamination
unit of GPT-3's appendix C. Each 13-gram is a 64-bit polynomial hash of per-word hashes, computed for a whole
split at once with numpy (positions whose 13 words cross a document boundary are dropped), so a check over
megabytes takes well under a second. Hashes use Python's ``hash`` of each word; counts are exact up to 64-bit
collisions. Each split is hashed up to ``MAX_BYTES``; the report says when a split was cut.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

NGRAM = 13
MAX_BYTES = 16_000_000
"""Bytes of each split hashed for the check (the first documents up to this size)."""
WARN_FRACTION = 0.05
"""Warn when at least this fraction of a validation split's distinct 13-grams occurs in a training split."""
_MULT = np.uint64(0x9E3779B97F4A7C15)


@dataclass
class Fingerprint:
    """What the check needs of one domain's two splits (built once when the domain is loaded)."""

    doc_digests: set[bytes]
    train_grams: np.ndarray
    """Sorted distinct 13-gram hashes of the training split."""
    val_grams: np.ndarray
    """13-gram hashes of the validation split, one per position."""
    val_gram_doc: np.ndarray
    """Index of the validation document each position belongs to."""
    n_val_docs: int
    train_lines: set[int]
    val_lines: set[int]
    truncated: bool = False


def _head(docs: list[str], max_bytes: int) -> tuple[list[str], bool]:
    size = 0
    for i, d in enumerate(docs):
        size += len(d.encode("utf-8")) + 1
        if size > max_bytes:
            return docs[:i], True
    return docs, False


def ngram_hashes(docs: list[str], n: int = NGRAM) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every word n-gram inside a document, and the document index of each."""
    words: list[str] = []
    doc_of: list[int] = []
    for i, d in enumerate(docs):
        w = d.split()
        words += w
        doc_of += [i] * len(w)
    if len(words) < n:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    ids = np.fromiter((hash(w) for w in words), dtype=np.int64, count=len(words)).view(np.uint64)
    docs_arr = np.asarray(doc_of, dtype=np.int64)
    m = len(words) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * _MULT + ids[k:k + m]
    keep = docs_arr[:m] == docs_arr[n - 1:]
    return h[keep], docs_arr[:m][keep]


def _lines(docs: list[str]) -> set[int]:
    return {hash(s) for d in docs for line in d.splitlines() if (s := line.strip())}


def fingerprint(train: list[str], val: list[str], max_bytes: int = MAX_BYTES) -> Fingerprint:
    tr, cut_t = _head(train, max_bytes)
    va, cut_v = _head(val, max_bytes)
    digests = {hashlib.sha1(d.encode("utf-8")).digest() for d in (*tr, *va)}
    tg, _ = ngram_hashes(tr)
    vg, vd = ngram_hashes(va)
    return Fingerprint(digests, np.unique(tg), vg, vd, len(va), _lines(tr), _lines(va), cut_t or cut_v)


@dataclass
class Overlap:
    grams: float
    """Fraction of the validation split's distinct 13-grams that occur in the training split."""
    docs: float
    """Fraction of validation documents sharing at least one 13-gram with the training split."""


@dataclass
class Report:
    domains: list[str]
    duplicates: dict[tuple[str, str], int] = field(default_factory=dict)
    """Documents found in both domains (either split), per pair."""
    overlap: dict[tuple[str, str], Overlap] = field(default_factory=dict)
    """(validation domain, training domain) -> overlap."""
    lines: dict[str, float] = field(default_factory=dict)
    """Fraction of a domain's distinct validation lines that occur verbatim in its own training split."""
    by_design: dict[str, str] = field(default_factory=dict)
    truncated: list[str] = field(default_factory=list)


def check(fps: dict[str, Fingerprint], by_design: dict[str, str] | None = None) -> Report:
    names = list(fps)
    rep = Report(names, by_design={k: v for k, v in (by_design or {}).items() if k in fps},
                 truncated=[n for n in names if fps[n].truncated])
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = len(fps[a].doc_digests & fps[b].doc_digests)
            if shared:
                rep.duplicates[(a, b)] = shared
    for v in names:
        fv = fps[v]
        distinct = np.unique(fv.val_grams)
        for t in names:
            if not len(distinct):
                rep.overlap[(v, t)] = Overlap(0.0, 0.0)
                continue
            hit_distinct = np.isin(distinct, fps[t].train_grams, assume_unique=True)
            hit = np.isin(fv.val_grams, fps[t].train_grams)
            rep.overlap[(v, t)] = Overlap(float(hit_distinct.mean()),
                                          len(np.unique(fv.val_gram_doc[hit])) / max(1, fv.n_val_docs))
        rep.lines[v] = len(fv.val_lines & fps[v].train_lines) / max(1, len(fv.val_lines))
    return rep


def warnings(rep: Report) -> list[str]:
    """One line per problem: duplicates across domains, or validation 13-grams seen in training (not by design)."""
    out = [f"{n} document(s) occur in both '{a}' and '{b}'" for (a, b), n in rep.duplicates.items()]
    for (v, t), o in rep.overlap.items():
        if o.grams >= WARN_FRACTION and not (v == t and v in rep.by_design):
            where = "its own training split" if v == t else f"the training split of '{t}'"
            out.append(f"{o.grams:.1%} of the validation {NGRAM}-grams of '{v}' ({o.docs:.0%} of its documents) "
                       f"occur in {where}")
    return out


def report_text(rep: Report) -> str:
    names = rep.domains
    w = max(8, *(len(n) for n in names)) + 1
    lines = [f"data hygiene over {len(names)} domain(s): exact duplicate documents and word {NGRAM}-gram overlap",
             "", "exact duplicate documents across domains:"]
    lines += [f"  {a} & {b}: {n}" for (a, b), n in rep.duplicates.items()] or ["  none"]
    lines += ["", f"validation {NGRAM}-grams found in a training split (% of distinct {NGRAM}-grams; rows: "
              f"validation, columns: training):", " " * w + "".join(f"{t:>{w}}" for t in names)]
    for v in names:
        lines.append(f"{v:<{w}}" + "".join(f"{rep.overlap[(v, t)].grams:>{w - 1}.1%} " for t in names))
    lines += ["", "validation lines found verbatim in the same domain's training split:",
              "  " + ", ".join(f"{n} {rep.lines[n]:.1%}" for n in names)]
    for n, why in rep.by_design.items():
        lines.append(f"by design: '{n}': {why}.")
    if rep.truncated:
        lines.append(f"checked the first {MAX_BYTES / 1e6:g} MB of each split of: {', '.join(rep.truncated)}")
    warn = warnings(rep)
    lines += [""] + ([f"warning: {x}" for x in warn] if warn else ["no problems found"])
    return "\n".join(lines)
