"""results.csv and results.parquet: one row per run x evaluation x domain."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sparsecl.report.load import Results

COLUMNS = ["run_id", "group", "seed", "method", "topology", "density", "status", "phase", "phase_domains", "step",
           "phase_step", "phase_end", "domain", "loss", "bpb", "acc", "tokens"]


def result_rows(res: Results) -> list[dict[str, Any]]:
    rows = []
    for r in res.runs:
        cfg = r.config
        sp = cfg.get("sparse", {})
        density = float(sp.get("density", 1.0))
        sched = cfg.get("schedule", [])
        for e in res.evals.get(r.run_id, []):
            ph = e["phase"]
            rows.append({
                "run_id": r.run_id, "group": cfg.get("group") or cfg.get("name") or r.run_id,
                "seed": int(cfg.get("seed", 0)), "method": cfg.get("method", {}).get("name", "naive"),
                "topology": "dense" if density >= 1 else sp.get("topology", "er"), "density": density,
                "status": r.status, "phase": ph,
                "phase_domains": "+".join(sched[ph - 1]["domains"]) if 0 < ph <= len(sched) else "init",
                "step": e["step"], "phase_step": e["phase_step"], "phase_end": bool(e["phase_end"]),
                "domain": e["domain"], "loss": e["loss"], "bpb": e["bpb"], "acc": e["acc"], "tokens": e["tokens"],
            })
    return rows


def export(res: Results, folder: Path) -> tuple[Path, Path]:
    rows = result_rows(res)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, pq_path = folder / "results.csv", folder / "results.parquet"
    tmp = folder / ".results.csv.tmp"
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(csv_path)
    schema = pa.schema([("run_id", pa.string()), ("group", pa.string()), ("seed", pa.int64()),
                        ("method", pa.string()), ("topology", pa.string()), ("density", pa.float64()),
                        ("status", pa.string()), ("phase", pa.int64()), ("phase_domains", pa.string()),
                        ("step", pa.int64()), ("phase_step", pa.int64()), ("phase_end", pa.bool_()),
                        ("domain", pa.string()), ("loss", pa.float64()), ("bpb", pa.float64()),
                        ("acc", pa.float64()), ("tokens", pa.int64())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / ".results.parquet.tmp")
    (folder / ".results.parquet.tmp").replace(pq_path)
    return csv_path, pq_path
