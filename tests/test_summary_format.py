"""summary.json stays readable: a file in the format runs wrote before the typed summary loads into
``RunSummary`` and is written back with the same keys, order and values."""

from __future__ import annotations

import json
from pathlib import Path

from sparsecl.store.record import RunSummary

OLD = Path(__file__).parent / "data" / "summary-2026-12.json"


def test_summary_written_in_the_earlier_format_loads_and_round_trips() -> None:
    old = json.loads(OLD.read_text())
    s = RunSummary.from_json(old)
    assert s.mean_final_acc_seen == old["final_avg_acc"]  # the legacy key fills the named field
    assert s.avg_forgetting == old["avg_forgetting"] and s.phases[1].domains == ["facts"]
    assert s.layers[0].name == "blocks.0.attn.qkv.q" and s.layers[0].nonzero == 512
    assert s.stages["objectives"] == ["lm", "lm", "lm"] and s.matching["matched_d_model"] == 32
    assert s.extra == {}
    out = s.to_json()
    assert out.pop("mean_final_acc_seen") == old["final_avg_acc"]
    assert list(out) == list(old) and out == old


def test_mean_final_acc_seen_is_the_last_row_mean_over_trained_domains() -> None:
    old = json.loads(OLD.read_text())
    last = old["acc_matrix"][-1]
    assert abs(RunSummary.from_json(old).mean_final_acc_seen - sum(last) / len(last)) < 1e-6
    # not the mean over the whole matrix (rows 0..T), which includes the untrained init row
    every = [a for row in old["acc_matrix"] for a in row]
    assert abs(sum(every) / len(every) - sum(last) / len(last)) > 1e-3


def test_older_summary_without_newer_keys_and_with_unknown_ones_loads() -> None:
    old = json.loads(OLD.read_text())
    for k in ("bwt_last", "eval_seconds", "tokenizer", "dense_reference_params", "objectives", "layers"):
        old.pop(k)
    old["custom_note"] = "kept"
    s = RunSummary.from_json(old)
    assert s.bwt_last is None and s.eval_seconds is None and s.tokenizer == {} and s.layers == []
    assert s.extra == {"custom_note": "kept"} and s.to_json()["custom_note"] == "kept"
