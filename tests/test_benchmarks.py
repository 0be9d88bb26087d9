"""Every benchmark keeps its contract (README, Benchmarks): run with its quickest settings it prints one JSON
object per line, each with the keys the script declares and what it was measured on (CPU vector flags, or the
GPU's name). Scripts are found by glob, so a new benchmark is covered as soon as it exists; it declares, as
module-level literals read here without importing it, ``ROW_KEYS`` (keys every line carries) and, unless a
plain ``--quick`` makes it a smoke run of a few seconds, ``QUICK_ARGS`` (the arguments that do).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))


def declared(path: Path, name: str, default: Any = None) -> Any:
    """A module-level literal of a script, read from its source (importing it would load torch and set env)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    return default


def run_quick(path: Path) -> list[dict[str, Any]]:
    quick = declared(path, "QUICK_ARGS", ["--quick"])
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, str(path), *quick], env=env, capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0, f"{path.name} {' '.join(quick)} failed:\n{out.stderr[-3000:]}"
    lines = out.stdout.splitlines()
    assert lines, f"{path.name} printed nothing"
    rows = []
    for line in lines:
        row = json.loads(line)  # one whole JSON object per line: no indented or multi-line output
        assert isinstance(row, dict), f"{path.name}: a line is not a JSON object: {line!r}"
        rows.append(row)
    return rows


def check_sparse_linear(rows: list[dict[str, Any]]) -> None:
    assert [r["density"] for r in rows] == [0.01, 0.05, 0.10, 0.20, 0.30, 1.0]
    assert all((r["in"], r["out"], r["tokens"]) == (1024, 1024, 512) for r in rows)
    assert all(r["dense_ms"] > 0 and r["masked_ms"] > 0 and r["csr_ms"] > 0 for r in rows)


def check_train_step(rows: list[dict[str, Any]]) -> None:
    by = {r["name"]: r for r in rows}
    assert list(by) == ["dense", "csr_5pct", "masked_5pct", "iso_params_10pct", "iso_params_10pct_block",
                        "iso_params_10pct_block256"]
    assert by["dense"]["speedup_vs_dense"] == 1.0
    assert by["dense"]["d_model"] == by["csr_5pct"]["d_model"] == 256
    assert by["csr_5pct"]["params_nonzero"] == by["masked_5pct"]["params_nonzero"] < by["dense"]["params_nonzero"]
    iso = by["iso_params_10pct"]  # widened to the dense model's parameter count
    assert iso["d_model"] > 256
    assert abs(iso["params_nonzero"] - iso["dense_reference_params"]) / iso["dense_reference_params"] < 0.05
    for name, b in (("iso_params_10pct_block", 128), ("iso_params_10pct_block256", 256)):
        blk = by[name]  # the same widening, whole tiles, the block backend
        assert (blk["topology"], blk["backend"], blk["block"]) == ("block", "block", b)
        assert abs(blk["params_nonzero"] - blk["dense_reference_params"]) / blk["dense_reference_params"] < 0.05


def check_train_throughput(rows: list[dict[str, Any]]) -> None:
    (row,) = rows
    assert row["name"] == "A" and row["config"]["n_layer"] == 4 and row["config"]["batch"] == 16
    tokens = row["config"]["batch"] * row["config"]["block_size"]
    assert row["tokens_per_second"] == pytest.approx(tokens / (row["ms_per_step"] / 1000), rel=0.01)


def check_sweep_throughput(rows: list[dict[str, Any]]) -> None:
    (row,) = rows
    par, seq = row["parallel_2x1thread"], row["sequential_1x2threads"]
    assert (par["parallel"], par["threads_per_run"], seq["parallel"], seq["threads_per_run"]) == (2, 1, 1, 2)
    assert par["runs"] == seq["runs"] == 2 and row["steps_per_run"] == 6
    assert row["speedup"] == pytest.approx(par["runs_per_hour"] / seq["runs_per_hour"], rel=0.01)
    assert row["meets_target"] == (row["speedup"] >= row["target"])


def check_method_overhead(rows: list[dict[str, Any]]) -> None:
    from sparsecl.methods import METHODS

    assert [r["method"] for r in rows] == ["naive"] + sorted(m for m in METHODS if m != "naive")
    assert rows[0]["overhead_vs_naive"] == 1.0
    assert all(r["steps"] == 4 and r["ms_per_step"] > 0 and r["density"] == 0.5 for r in rows)  # none skipped


def check_probe_cost(rows: list[dict[str, Any]]) -> None:
    from sparsecl.config import DEFAULT_PROBES
    from sparsecl.probes import PROBES

    # --quick: two phases; every probe at the last phase end, the default set at each phase end, then the run
    assert sorted(r["probe"] for r in rows[:len(PROBES)]) == sorted(PROBES)  # defaults first, then the others
    assert [r["probe"] for r in rows[len(PROBES):]] == ["default_set_phase", "default_set_phase", "default_set_run"]
    assert all(r["default"] == (r["probe"] in DEFAULT_PROBES) for r in rows[:len(PROBES)])
    assert [r["phase"] for r in rows[len(PROBES):-1]] == [1, 2]
    assert rows[-1]["schedule"] == "arith,facts" and rows[-1]["steps_per_phase"] == 2
    assert rows[-1]["seconds"] == pytest.approx(sum(r["seconds"] for r in rows[len(PROBES):-1]), abs=2e-3)
    assert all(r["seconds"] >= 0 for r in rows)


def check_data_pipeline(rows: list[dict[str, Any]]) -> None:
    assert [(r["name"], r.get("tokenizer")) for r in rows] == [("tokenize", "byte"), ("tokenize", "bpe"),
                                                               ("large_corpus", None), ("cache", None)]
    assert all(r["mb_per_s"] > 0 for r in rows[:2])
    big, cache = rows[2], rows[3]
    assert big["corpus_bytes"] >= 4_000_000 and big["steps"] == 10 and 0 < big["peak_rss_mb"] < 1024
    assert cache["first_start_s"] > 0 and cache["second_start_s"] > 0
    assert cache["cache_entries"] == 1  # the second run reused the first run's token cache


def check_eval_cost(rows: list[dict[str, Any]]) -> None:
    assert [r["eval_tokens"] for r in rows] == [256]
    assert rows[0]["windows"] == 2  # ceil(256 / block 128)
    assert rows[0]["eval_seconds"] > 0 and rows[0]["step_seconds"] > 0


CHECKS: dict[str, Callable[[list[dict[str, Any]]], None]] = {
    "data_pipeline.py": check_data_pipeline, "eval_cost.py": check_eval_cost,
    "sparse_linear.py": check_sparse_linear, "train_step.py": check_train_step,
    "train_throughput.py": check_train_throughput, "sweep_throughput.py": check_sweep_throughput,
    "method_overhead.py": check_method_overhead, "probe_cost.py": check_probe_cost,
}


def test_benchmarks_are_found() -> None:
    assert {"sparse_linear.py", "train_step.py", "train_throughput.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_quick_run_prints_json_lines(path: Path) -> None:
    keys = declared(path, "ROW_KEYS")
    assert keys, f"{path.name}: declare ROW_KEYS, the keys every JSON line carries (see the README, Benchmarks)"
    rows = run_quick(path)
    for row in rows:
        assert set(keys) <= set(row), f"{path.name}: line lacks {sorted(set(keys) - set(row))}: {row}"
        if row.get("device", "cpu") == "cpu":  # what the numbers were measured on: the CPU's vector extensions
            assert isinstance(row.get("cpu_flags"), list) and row.get("cpu_capability"), f"{path.name}: {row}"
        else:  # ... or the GPU's name
            assert isinstance(row["device"], str) and row["device"] != "cuda", f"{path.name}: {row}"
    if path.name in CHECKS:
        CHECKS[path.name](rows)
