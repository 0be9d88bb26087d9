"""TensorBoard logging: eval losses per domain at every evaluation step, and loss matrices at phase ends."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch
from _sweep_tiny import tiny

from sparsecl.config import build_config
from sparsecl.metrics.summary import TIMING_KEYS
from sparsecl.train.runner import run_experiment

torch.set_num_threads(1)


def test_tensorboard_scalars_match_the_index(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'sparsecl[logging]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = build_config({**tiny(), "name": "tb", "log": {"tensorboard": True}})
    plain = build_config({**tiny(), "name": "plain"})
    summaries = run_experiment([cfg, plain], tmp_path, progress_bar=False)
    ea = EventAccumulator(str(tmp_path / "tb" / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    conn = sqlite3.connect(tmp_path / "index.sqlite")
    try:
        ref = conn.execute("SELECT step, loss FROM evals WHERE run_id='tb' AND domain='facts' ORDER BY step").fetchall()
    finally:
        conn.close()
    got = [(e.step, e.value) for e in ea.Scalars("eval_loss/facts")]
    assert [s for s, _ in got] == [s for s, _ in ref] == [0, 3, 6, 9, 12, 15, 18]
    assert [v for _, v in got] == pytest.approx([v for _, v in ref], rel=1e-6)
    assert "eval_loss/avg_seen" in ea.Tags()["scalars"]
    assert [e.step for e in ea.Images("loss_matrix")] == [0, 6, 12, 18]  # init and every phase end
    # logging never changes results
    drop = ("name", "group", *TIMING_KEYS)
    assert {k: v for k, v in summaries[0].to_json().items() if k not in drop} == \
        {k: v for k, v in summaries[1].to_json().items() if k not in drop}
