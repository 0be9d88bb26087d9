"""benchmarks/data_pipeline.py --quick runs end to end and prints the rows the issue asks for."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tokenizers")

ROOT = Path(__file__).resolve().parents[1]


def test_data_pipeline_quick_prints_its_json_rows() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "data_pipeline.py"), "--quick"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["name"], r.get("tokenizer")) for r in rows] == [("tokenize", "byte"), ("tokenize", "bpe"),
                                                               ("large_corpus", None), ("cache", None)]
    for r in rows:
        assert isinstance(r["cpu_flags"], list) and r["cpu_capability"]
    assert all(r["mb_per_s"] > 0 for r in rows[:2])
    big, cache = rows[2], rows[3]
    assert big["corpus_bytes"] >= 4_000_000 and big["steps"] == 10 and 0 < big["peak_rss_mb"] < 1024
    assert cache["first_start_s"] > 0 and cache["second_start_s"] > 0
    assert cache["cache_entries"] == 1  # the second run reused the first run's token cache
