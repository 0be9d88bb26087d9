"""Reading a run folder's SQLite index in tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def query_index(out: Path, sql: str) -> list[tuple]:
    """Rows of ``sql`` run against ``out/index.sqlite``."""
    con = sqlite3.connect(out / "index.sqlite")
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()
