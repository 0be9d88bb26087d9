"""Figures built from arm groups in which some runs did not finish."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from sparsecl.report import figures as F  # noqa: E402
from sparsecl.stats.analysis import ArmGroup, Run  # noqa: E402


def test_loss_heatmap_labels_come_from_the_first_finished_run() -> None:
    """A failed first seed (no summary) no longer breaks the heatmap: labels come from a run that finished."""
    done = {"loss_matrix": [[3.0, 3.0], [1.0, 2.5]], "phases": [{"domains": ["x"]}], "domains": ["x", "y"]}
    group = ArmGroup("dense", [Run("s0", {}, None, status="failed", error="boom"), Run("s1", {}, done)])
    fig = F.loss_heatmap(group)
    assert fig is not None
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x", "y"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["init", "1:x"]
    assert ax.get_title() == "dense: loss matrix, mean of 1 seed(s)"
    assert F.loss_heatmap(ArmGroup("dense", [Run("s0", {}, None, status="failed")])) is None
