"""Eight processes writing to one index at once lose no rows (WAL, immediate transactions, retries)."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

from sparsecl.store.index import Index

N_ROWS = 60


def _writer(path: str, k: int) -> None:
    idx = Index(path)
    try:
        idx.set_run(f"r{k}", f"r{k}", "running", config={"k": k})
        for step in range(N_ROWS):
            idx.add_evals(f"r{k}", [{"phase": 1, "step": step, "phase_step": step, "phase_end": False,
                                     "domain": d, "loss": k + step / 100, "bpb": 1.0, "acc": 0.5, "tokens": 8}
                                    for d in ("a", "b")])
        idx.set_run(f"r{k}", f"r{k}", "done", summary={"k": k})
    finally:
        idx.close()


def test_eight_parallel_writers_lose_no_rows(tmp_path: Path) -> None:
    path = str(tmp_path / "index.sqlite")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, k)) for k in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 8
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        counts = dict(conn.execute("SELECT run_id, COUNT(*) FROM evals GROUP BY run_id").fetchall())
        assert counts == {f"r{k}": 2 * N_ROWS for k in range(8)}
        for k in range(8):
            steps = [r[0] for r in conn.execute("SELECT DISTINCT step FROM evals WHERE run_id=? ORDER BY step",
                                                (f"r{k}",))]
            assert steps == list(range(N_ROWS))
        assert conn.execute("SELECT COUNT(*) FROM runs WHERE status='done'").fetchone()[0] == 8
    finally:
        conn.close()
