"""Documents to token stream: tokenizer throughput, a run over a corpus larger than comfortable RAM, cache reuse.

Prints one JSON object per line, each with the CPU's vector flags:
- ``tokenize``: MB of UTF-8 text per second through the byte tokenizer and a byte-level BPE (vocab 4096 trained
  on 2 MB of the same stdlib text, 0.3 MB when quick), over ``--tokenize-mb`` of Python standard-library source.
- ``large_corpus``: ``sparsecl run`` over a generated ``txt`` corpus (``--corpus-gb``, default 2.1 GB of unique
  documents written to a temporary folder and deleted afterwards) for ``--steps`` steps with a cold token
  cache; ``peak_rss_mb`` is the run process's peak resident set (os.wait4), which includes streaming the whole
  corpus into the cache. Target: <= 1,024 MB.
- ``cache``: process start to first training step (wall time minus the summary's training wall time) of that
  cold run and of a second run on the same corpus with the cache in place. Target: cache_speedup >= 10.
  ``floor_start_s`` is the same (warm) start on a 1 MB corpus: interpreter, torch and model set-up, the part
  of a start that no token cache removes; on a loaded machine it bounds the speedup (not measured by --quick).

    python benchmarks/data_pipeline.py            # full: ~2 GB corpus, 200 steps (minutes; needs ~5 GB of disk)
    python benchmarks/data_pipeline.py --quick    # 4 MB corpus, 10 steps (what tests/test_benchmarks runs)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import yaml  # noqa: E402
from _device import cpu_vector_flags  # noqa: E402

from sparsecl.data.corpora import python_stdlib  # noqa: E402
from sparsecl.data.tokenizer import BYTE, train_bpe  # noqa: E402


def emit(row: dict[str, object]) -> None:
    print(json.dumps({**row, **cpu_vector_flags()}), flush=True)


def tokenize_rows(mb: float, bpe_train_mb: float) -> None:
    docs = python_stdlib(int(mb * 1e6))
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    bpe = train_bpe(iter(python_stdlib(int(bpe_train_mb * 1e6))), 4096)
    for name, tok in (("byte", BYTE), ("bpe", bpe)):
        t0 = time.perf_counter()
        for i in range(0, len(docs), 256):  # the token cache's batches
            tok.encode_docs(docs[i:i + 256])
        dt = time.perf_counter() - t0
        emit({"name": "tokenize", "tokenizer": name, "vocab_size": tok.vocab_size, "text_mb": round(n_bytes / 1e6, 2),
              "mb_per_s": round(n_bytes / 1e6 / dt, 1)})


def write_corpus(path: Path, target_bytes: int) -> int:
    """Unique documents (a numbered header over stdlib chunks) separated by blank lines, written in 1 MB pieces."""
    chunks = [c.replace("\n\n", "\n") for c in python_stdlib(4_000_000)]
    size, i, buf, buf_len = 0, 0, [], 0
    with path.open("w", encoding="utf-8") as fh:
        while size < target_bytes:
            doc = f"# generated document {i}\n{chunks[i % len(chunks)]}\n\n"
            buf.append(doc)
            buf_len += len(doc)
            i += 1
            if buf_len >= 1 << 20:
                fh.write("".join(buf))
                size += buf_len
                buf, buf_len = [], 0
        fh.write("".join(buf))
    return path.stat().st_size


def run_once(cfg_path: Path, out: Path) -> tuple[float, float, dict[str, object]]:
    """(wall seconds, peak RSS MB, summary) of one `sparsecl run` in its own process."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "sparsecl", "run", str(cfg_path), "--out", str(out),
                             "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"sparsecl run failed: {err.strip()[-2000:]}")
    summary = json.loads((out / "big" / "summary.json").read_text())
    return wall, usage.ru_maxrss / 1024, summary  # ru_maxrss is in KiB on Linux


def corpus_rows(corpus_gb: float, steps: int, threads: int, tmp_root: str | None, floor_runs: bool) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sparsecl-bench-", dir=tmp_root))
    try:
        corpus = tmp / "corpus.txt"
        n_bytes = write_corpus(corpus, int(corpus_gb * 1e9))
        cfg = {"name": "big", "seed": 0, "device": "cpu", "threads": threads,
               "model": {"n_layer": 2, "n_head": 2, "d_model": 64, "block_size": 64},
               "data": {"domains": [{"name": "big", "source": "txt", "path": str(corpus)}],
                        "cache_dir": str(tmp / "cache")},
               "schedule": [{"domain": "big", "steps": steps}],
               "train": {"batch_size": 8, "warmup_steps": 5},
               "eval": {"every": 0, "batches": 1, "batch_size": 8}, "probes": []}
        cfg_path = tmp / "cfg.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        wall1, rss1, s1 = run_once(cfg_path, tmp / "out1")
        emit({"name": "large_corpus", "corpus_bytes": n_bytes, "steps": s1["steps"], "peak_rss_mb": round(rss1, 1),
              "wall_s": round(wall1, 2), "threads": threads, "load_avg_1m": round(os.getloadavg()[0], 2)})
        wall2, rss2, s2 = run_once(cfg_path, tmp / "out2")
        first, second = wall1 - float(s1["wall_seconds"]), wall2 - float(s2["wall_seconds"])
        entries = [p.name for p in (tmp / "cache" / "tokens").iterdir()]
        floor = None
        if floor_runs:
            cfg["data"]["domains"] = [{"name": "big", "source": "txt", "path": str(tmp / "small.txt")}]
            write_corpus(tmp / "small.txt", 30_000)  # the same run on 1 MB: what no token cache can remove
            cfg_path.write_text(yaml.safe_dump(cfg))
            run_once(cfg_path, tmp / "out3")
            wall4, _, s4 = run_once(cfg_path, tmp / "out4")
            floor = round(wall4 - float(s4["wall_seconds"]), 2)
        emit({"name": "cache", "corpus_bytes": n_bytes, "first_start_s": round(first, 2),
              "second_start_s": round(second, 2), "cache_speedup": round(first / second, 1),
              "floor_start_s": floor,
              "second_peak_rss_mb": round(rss2, 1), "cache_entries": len(entries),
              "load_avg_1m": round(os.getloadavg()[0], 2)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke test (4 MB corpus, 10 steps)")
    ap.add_argument("--corpus-gb", type=float, default=None, help="generated corpus size (default 2.1, quick 0.004)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per run (default 200, quick 10)")
    ap.add_argument("--tokenize-mb", type=float, default=None, help="text for the tokenize rows (default 8, quick 0.5)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tmp", default=None, help="folder for the temporary corpus (default: the system's)")
    a = ap.parse_args()
    tokenize_rows(a.tokenize_mb or (0.5 if a.quick else 8), 0.3 if a.quick else 2)
    corpus_rows(a.corpus_gb or (0.004 if a.quick else 2.1), a.steps or (10 if a.quick else 200), a.threads, a.tmp,
                floor_runs=not a.quick)


if __name__ == "__main__":
    main()
