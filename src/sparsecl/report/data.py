"""The data behind a report: documents and bytes per domain and split, validation lines that also occur in
training, and how many tokens one evaluation scores per domain.

Documents are re-read from the runs' resolved data config with the same loader and hash split as training, so
the numbers describe exactly what was trained and evaluated; a summary's ``eval_tokens`` takes precedence
over the evaluation table's token counts when present.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsecl.config import DomainSpec, build_config
from sparsecl.data.domains import load_documents, split_documents
from sparsecl.errors import UserError
from sparsecl.stats.analysis import Run

MAX_REREAD = 256 * 2**20
"""Local sources larger than this (bytes, without a max_bytes cap below it) are not re-read for the report."""
MIN_LINE = 20
"""Shortest line (characters, stripped) counted for overlap: shorter ones ('return x', '}') recur by nature."""


@dataclass
class DomainData:
    domain: str
    source: str
    train_docs: int
    val_docs: int
    train_bytes: int
    val_bytes: int
    overlap: float | None
    """Fraction of the validation lines of MIN_LINE+ characters that also occur in the training documents."""


def _bytes(docs: list[str]) -> int:
    return sum(len(d.encode("utf-8")) for d in docs)


def line_overlap(train: list[str], val: list[str]) -> float | None:
    """Fraction of validation lines (MIN_LINE+ characters) that occur verbatim among the training lines."""
    seen = {ln.strip() for d in train for ln in d.splitlines() if len(ln.strip()) >= MIN_LINE}
    lines = [ln.strip() for d in val for ln in d.splitlines() if len(ln.strip()) >= MIN_LINE]
    return sum(ln in seen for ln in lines) / len(lines) if lines else None


def _source_bytes(spec: DomainSpec) -> int:
    if spec.source == "builtin":
        return 0
    path = Path(spec.path).expanduser()
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size if path.is_file() else 0


def domain_data(runs: list[Run]) -> tuple[list[DomainData], str | None]:
    """Per domain of the first run's data config; the second value says what could not be read, if anything."""
    cfg = next((r.config for r in runs if r.summary is not None and r.config), None)
    if cfg is None:
        return [], "no finished run"
    out, skipped = [], []
    try:
        data = build_config(cfg).data
        for spec in data.domains:
            size = _source_bytes(spec)
            if size > MAX_REREAD and not 0 < spec.max_bytes <= MAX_REREAD:
                skipped.append(f"{spec.name} ({size / 2**20:,.0f} MiB, too large to re-read for a report)")
                continue
            train, val = split_documents(load_documents(spec), data.split_salt, data.val_fraction)
            out.append(DomainData(spec.name, spec.source, len(train), len(val), _bytes(train), _bytes(val),
                                  line_overlap(train, val)))
    except (UserError, OSError) as e:
        return [], f"the documents could not be re-read ({e})"
    return out, ("not shown: " + ", ".join(skipped)) if skipped else None


def eval_tokens(runs: list[Run], evals: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """Tokens scored per domain in one evaluation: summary ``eval_tokens`` if present, else the fewest tokens of
    any evaluation row of these runs (the evaluation table's ``tokens``)."""
    out: dict[str, int] = {}
    for r in runs:
        for d, n in ((r.summary.eval_tokens if r.summary is not None else None) or {}).items():
            out[d] = min(out.get(d, int(n)), int(n))
    if out:
        return out
    for r in runs:
        for e in evals.get(r.run_id, []):
            if e.get("tokens") is not None:
                out[e["domain"]] = min(out.get(e["domain"], int(e["tokens"])), int(e["tokens"]))
    return out
