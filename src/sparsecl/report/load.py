"""Read everything a report needs from a run folder, a `sparsecl run` output folder or a sweep folder."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sparsecl.errors import UserError
from sparsecl.stats.analysis import Run
from sparsecl.store.index import INDEX_NAME
from sparsecl.store.record import read_summary


@dataclass
class Results:
    root: Path
    """Where the report goes (``root/report``)."""
    runs: list[Run]
    evals: dict[str, list[dict[str, Any]]]
    """Evaluation rows per run id, in step order."""
    probes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Rows of an index ``probes`` table per run id, when one exists."""
    has_index: bool = True


def _read_index(path: Path, run_ids: set[str] | None) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict]],
                                                               dict[str, list[dict]]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60.0)
    try:
        def rows(sql: str) -> list[dict[str, Any]]:
            cur = conn.execute(sql)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        runs = {r["run_id"]: r for r in rows("SELECT * FROM runs") if run_ids is None or r["run_id"] in run_ids}
        evals: dict[str, list[dict]] = {}
        for r in rows("SELECT * FROM evals ORDER BY run_id, step, rowid"):
            if run_ids is None or r["run_id"] in run_ids:
                evals.setdefault(r["run_id"], []).append(r)
        probes: dict[str, list[dict]] = {}
        if "probes" in tables:
            for r in rows("SELECT * FROM probes"):
                if "run_id" in r and (run_ids is None or r["run_id"] in run_ids):
                    probes.setdefault(r["run_id"], []).append(r)
        return runs, evals, probes
    finally:
        conn.close()


def load_results(path: Path) -> Results:
    """One run folder (holding config.yaml) or a folder of runs (with index.sqlite from run or sweep)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"'{path}' is not a folder; pass a run folder or the --out folder of run/sweep")
    single = (path / "config.yaml").is_file()
    run_dirs = [path] if single else sorted(p for p in path.iterdir() if (p / "config.yaml").is_file())
    index_path = (path.parent if single else path) / INDEX_NAME
    index_runs: dict[str, dict[str, Any]] = {}
    evals: dict[str, list[dict]] = {}
    probes: dict[str, list[dict]] = {}
    if index_path.is_file():
        index_runs, evals, probes = _read_index(index_path, {path.name} if single else None)
    if not run_dirs and not index_runs:
        raise UserError(f"'{path}' holds no runs (no <run>/config.yaml and no {INDEX_NAME}); pass the folder given "
                        f"to `sparsecl run --out` or `sparsecl sweep --out`, or one run folder")
    runs: list[Run] = []
    for rd in run_dirs:
        cfg = yaml.safe_load((rd / "config.yaml").read_text())
        summary = read_summary(rd) if (rd / "summary.json").is_file() else None
        row = index_runs.get(rd.name, {})
        status = "done" if summary is not None else (row.get("status") or "unfinished")
        if status == "running" and summary is None:
            status = "unfinished"
        error = row.get("error")
        if error is None and status == "failed" and (rd / "error.txt").is_file():
            error = (rd / "error.txt").read_text().strip().splitlines()[-1]
        runs.append(Run(rd.name, cfg, summary, status, error))
    seen = {r.run_id for r in runs}
    for run_id, row in sorted(index_runs.items()):  # runs that failed before their folder was written
        if run_id not in seen:
            cfg = json.loads(row["config"]) if row.get("config") else {}
            runs.append(Run(run_id, cfg, None, row["status"], row.get("error")))
    return Results(path, runs, evals, probes, index_path.is_file())
