"""The SQLite index of runs and evaluation rows (WAL mode, safe with parallel writers)."""

from __future__ import annotations

import errno
import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    config TEXT,
    summary TEXT,
    error TEXT,
    updated REAL
);
CREATE TABLE IF NOT EXISTS evals (
    run_id TEXT NOT NULL,
    phase INTEGER NOT NULL,
    step INTEGER NOT NULL,
    phase_step INTEGER NOT NULL,
    phase_end INTEGER NOT NULL,
    domain TEXT NOT NULL,
    loss REAL NOT NULL,
    bpb REAL NOT NULL,
    acc REAL NOT NULL,
    tokens INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS evals_run ON evals(run_id, step);
CREATE TABLE IF NOT EXISTS probes (
    run_id TEXT NOT NULL,
    phase INTEGER NOT NULL,
    step INTEGER NOT NULL,
    probe TEXT NOT NULL,
    key TEXT NOT NULL,
    value REAL
);
CREATE INDEX IF NOT EXISTS probes_run ON probes(run_id, step);
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    status TEXT,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    node_id TEXT,
    node_ip TEXT,
    gpu_ids TEXT,
    resumed_from TEXT
);
"""

INDEX_NAME = "index.sqlite"


class Index:
    """One connection per process; each write is its own short transaction, retried while locked."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        self.conn.execute("PRAGMA busy_timeout=60000")
        # Switching to WAL needs an exclusive lock and SQLite does not call the busy handler for it, so
        # several workers opening a fresh index together must retry here themselves.
        self._retry(lambda: self.conn.execute("PRAGMA journal_mode=WAL"))
        self.conn.execute("PRAGMA synchronous=NORMAL")
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                self._write(lambda c, st=stmt: c.execute(st))

    def _retry(self, op: Any) -> None:
        for attempt in range(40):
            try:
                op()
                return
            except sqlite3.OperationalError as e:
                if "disk is full" in str(e) or "disk I/O error" in str(e):
                    raise OSError(errno.ENOSPC, f"the disk is full (SQLite: {e})", str(self.path)) from e
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise sqlite3.OperationalError(f"index {self.path} stayed locked; another process holds it")

    def _write(self, fn: Any) -> None:
        def txn() -> None:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                fn(self.conn)
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:  # SQLite already rolled back after e.g. a full disk
                    self.conn.execute("ROLLBACK")
                raise

        self._retry(txn)

    def set_run(self, run_id: str, name: str, status: str, config: dict | None = None,
                summary: dict | None = None, error: str | None = None) -> None:
        def fn(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO runs(run_id, name, status, config, summary, error, updated) "
                "VALUES (?,?,?,?,?,?,?) ON CONFLICT(run_id) DO UPDATE SET name=excluded.name, "
                "status=excluded.status, config=COALESCE(excluded.config, runs.config), "
                "summary=excluded.summary, error=excluded.error, updated=excluded.updated",
                (run_id, name, status, json.dumps(config) if config is not None else None,
                 json.dumps(summary) if summary is not None else None, error, time.time()))

        self._write(fn)

    def add_evals(self, run_id: str, rows: Iterable[dict[str, Any]]) -> None:
        data = [(run_id, r["phase"], r["step"], r["phase_step"], int(r["phase_end"]), r["domain"],
                 r["loss"], r["bpb"], r["acc"], r["tokens"]) for r in rows]
        self._write(lambda c: c.executemany("INSERT INTO evals VALUES (?,?,?,?,?,?,?,?,?,?)", data))

    def truncate_evals(self, run_id: str, after_step: int) -> None:
        """Drop rows a killed run wrote after its last checkpoint; the resumed run writes them again."""
        self._write(lambda c: c.execute("DELETE FROM evals WHERE run_id=? AND step>?", (run_id, after_step)))

    def add_probes(self, run_id: str, rows: Iterable[dict[str, Any]]) -> None:
        """Probe results, one row per (phase, step, probe, key)."""
        data = [(run_id, r["phase"], r["step"], r["probe"], r["key"], r["value"]) for r in rows]
        self._write(lambda c: c.executemany("INSERT INTO probes VALUES (?,?,?,?,?,?)", data))

    def start_attempt(self, run_id: str, where: dict[str, Any], resumed_from: str | None) -> int:
        """Record that a process starts (or resumes) ``run_id``; returns the attempt's row id for ``end_attempt``.

        ``where``: host, pid and, under Ray, node_id, node_ip and gpu_ids: on a cluster this is how one finds
        which machine trained (or was training when it died) which run.
        """
        rowid: list[int] = []

        def fn(c: sqlite3.Connection) -> None:
            cur = c.execute("INSERT INTO attempts(run_id, started, host, pid, node_id, node_ip, gpu_ids, resumed_from) "
                            "VALUES (?,?,?,?,?,?,?,?)",
                            (run_id, time.time(), where["host"], where["pid"], where.get("node_id"),
                             where.get("node_ip"), json.dumps(where["gpu_ids"]) if "gpu_ids" in where else None,
                             resumed_from))
            rowid.append(int(cur.lastrowid or 0))

        self._write(fn)
        return rowid[-1]

    def end_attempt(self, attempt: int, status: str) -> None:
        """An attempt whose process died (killed, its node lost) keeps ``ended`` NULL."""
        self._write(lambda c: c.execute("UPDATE attempts SET ended=?, status=? WHERE rowid=?",
                                        (time.time(), status, attempt)))

    def end_open_attempts(self, run_id: str, status: str) -> None:
        """Close the attempts of ``run_id`` whose process can no longer do it (e.g. its Ray node died)."""
        self._write(lambda c: c.execute("UPDATE attempts SET ended=?, status=? WHERE run_id=? AND ended IS NULL",
                                        (time.time(), status, run_id)))

    def attempts(self, run_id: str | None = None) -> list[dict[str, Any]]:
        q, args = ("SELECT * FROM attempts ORDER BY rowid", ()) if run_id is None else (
            "SELECT * FROM attempts WHERE run_id=? ORDER BY rowid", (run_id,))
        cur = self.conn.execute(q, args)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def forget_run(self, run_id: str) -> None:
        """Drop every evaluation and probe row of ``run_id``: the run starts afresh (e.g. its folder was deleted)."""
        self.truncate_evals(run_id, -1)
        self.truncate_probes(run_id, -1)

    def truncate_probes(self, run_id: str, after_step: int) -> None:
        """Like ``truncate_evals`` for probe rows; also clears old rows before `sparsecl probe` rewrites them."""
        self._write(lambda c: c.execute("DELETE FROM probes WHERE run_id=? AND step>?", (run_id, after_step)))

    def probes(self, run_id: str) -> list[dict[str, Any]]:
        cur = self.conn.execute("SELECT * FROM probes WHERE run_id=? ORDER BY step, rowid", (run_id,))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def evals(self, run_id: str) -> list[dict[str, Any]]:
        cur = self.conn.execute("SELECT * FROM evals WHERE run_id=? ORDER BY step, rowid", (run_id,))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def runs(self) -> list[dict[str, Any]]:
        cur = self.conn.execute("SELECT * FROM runs ORDER BY run_id")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def close(self) -> None:
        self.conn.close()
