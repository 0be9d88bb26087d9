"""The report's figures (matplotlib, Agg backend), each saved as PNG and PDF.

Every function takes plain data and returns a ``Figure``; ``save`` writes it. Means are over the seeds of
an arm; bands and error bars are 95% Student-t intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from sparsecl.stats.analysis import ArmGroup  # noqa: E402
from sparsecl.stats.intervals import t_interval  # noqa: E402

plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "font.size": 9})


def save(fig: Figure, folder: Path, stem: str) -> Path:
    """Write ``stem.png`` and ``stem.pdf``; returns the PNG path."""
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / f"{stem}.png"
    fig.savefig(png, bbox_inches="tight")
    fig.savefig(folder / f"{stem}.pdf", bbox_inches="tight")
    plt.close(fig)
    return png


def _phase_label(phases: Sequence[dict[str, Any]], j: int) -> str:
    return "init" if j == 0 else f"{j}:{'+'.join(phases[j - 1]['domains'])}"


def _mean_band(series: list[list[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arr = np.array(series, dtype=float)
    mean = arr.mean(0)
    if arr.shape[0] < 2:
        return mean, mean, mean
    lo, hi = zip(*[t_interval(col)[1:] for col in arr.T], strict=True)
    return mean, np.array(lo), np.array(hi)


def forgetting_curves(group: ArmGroup, evals: dict[str, list[dict[str, Any]]]) -> Figure | None:
    """Validation loss of every domain against the global step, mean over seeds, phase ends marked."""
    runs = [r for r in group.runs if evals.get(r.run_id)]
    if not runs:
        return None
    phases = runs[0].summary["phases"] if runs[0].summary else []
    domains = runs[0].summary["domains"] if runs[0].summary else sorted({e["domain"] for e in evals[runs[0].run_id]})
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = plt.get_cmap("tab10")
    for k, d in enumerate(domains):
        per_run = []
        steps: list[int] = []
        for r in runs:
            rows = [e for e in evals[r.run_id] if e["domain"] == d]
            if not steps:
                steps = [e["step"] for e in rows]
            if [e["step"] for e in rows] == steps:
                per_run.append([e["loss"] for e in rows])
        if not per_run:
            continue
        mean, lo, hi = _mean_band(per_run)
        ax.plot(steps, mean, color=colors(k % 10), label=d, lw=1.4)
        if len(per_run) > 1:
            ax.fill_between(steps, lo, hi, color=colors(k % 10), alpha=0.18, lw=0)
    bound = 0
    for ph in phases:
        bound += ph["steps"]
        ax.axvline(bound, color="0.45", ls=":", lw=0.8)
        if len(phases) <= 12:
            ax.text(bound - ph["steps"] / 2, 1.01, "+".join(ph["domains"]), transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=7, color="0.3")
    ax.set_xlabel("training step (dotted lines: phase ends)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"{group.name}: loss per domain (n={len(runs)} seeds{', band = 95% t CI' if len(runs) > 1 else ''})",
                 pad=14)
    ax.legend(fontsize=7, ncol=min(len(domains), 5), loc="upper right")
    return fig


def loss_heatmap(group: ArmGroup) -> Figure | None:
    mats = [r.summary["loss_matrix"] for r in group.runs if r.summary]
    if not mats:
        return None
    s = group.runs[0].summary
    L = np.mean(np.array(mats, dtype=float), axis=0)
    rows = [_phase_label(s["phases"], j) for j in range(L.shape[0])]
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * L.shape[1], 1.0 + 0.28 * L.shape[0]))
    im = ax.imshow(L, aspect="auto", cmap="viridis_r")
    ax.set_xticks(range(L.shape[1]), s["domains"], rotation=30, ha="right")
    ax.set_yticks(range(L.shape[0]), rows, fontsize=7 if L.shape[0] > 12 else 8)
    if L.size <= 200:
        mid = (L.max() + L.min()) / 2
        for j in range(L.shape[0]):
            for i in range(L.shape[1]):
                ax.text(i, j, f"{L[j, i]:.2f}", ha="center", va="center", fontsize=6.5,
                        color="white" if L[j, i] > mid else "black")
    ax.set_xlabel("evaluated domain")
    ax.set_ylabel("after phase")
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="loss (nats/token, lower = better)")
    ax.set_title(f"{group.name}: loss matrix, mean of {len(mats)} seed(s)")
    return fig


def crossover_plot(groups: Sequence[ArmGroup]) -> Figure | None:
    """Average seen-domain loss A(j) against phase per arm, with 95% t bands."""
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = plt.get_cmap("tab10")
    drawn = 0
    for k, g in enumerate(groups):
        curves = [r.summary["avg_seen_loss_by_phase"] for r in g.runs if r.summary]
        curves = [c for c in curves if len(c) == len(curves[0])]
        if not curves:
            continue
        x = list(range(1, len(curves[0])))
        mean, lo, hi = _mean_band([c[1:] for c in curves])
        style = "-" if g.density < 1 else "--"
        ax.plot(x, mean, style, color=colors(k % 10), marker="o", ms=3, label=f"{g.name} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(x, lo, hi, color=colors(k % 10), alpha=0.15, lw=0)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("after phase j")
    ax.set_ylabel("A(j): mean loss over domains seen so far")
    ax.set_title("average seen-domain loss per arm (dashed = dense; band = 95% t CI over seeds)")
    ax.legend(fontsize=7, ncol=2)
    return fig


def density_plot(lines: dict[str, list[dict[str, Any]]]) -> Figure | None:
    if not any(len(pts) for pts in lines.values()):
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in lines.items():
        x = [p["density"] for p in pts]
        y = [p["mean"] for p in pts]
        err = [[0 if math.isnan(p["lo"]) else p["mean"] - p["lo"] for p in pts],
               [0 if math.isnan(p["hi"]) else p["hi"] - p["mean"] for p in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.axhline(0, color="0.5", lw=0.7)
    ax.set_xlabel("density rho (log scale; 1 = dense)")
    ax.set_ylabel("average forgetting (loss, + = forgot)")
    ax.set_title("forgetting vs density (mean, 95% t CI over seeds)")
    ax.legend(fontsize=7)
    return fig


def comparison_bars(groups: Sequence[ArmGroup], title: str) -> Figure | None:
    """Average forgetting and final average loss per arm, mean with 95% t CI."""
    groups = [g for g in groups if g.values("avg_forgetting")]
    if not groups:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.1 * len(groups) + 3), 3.6))
    for ax, metric, label in ((axes[0], "avg_forgetting", "avg forgetting (loss, + = forgot)"),
                              (axes[1], "final_avg_loss", "final avg seen loss (lower = better)")):
        stats = [t_interval(g.values(metric)) for g in groups]
        means = [s[0] for s in stats]
        err = [[0 if math.isnan(s[1]) else s[0] - s[1] for s in stats],
               [0 if math.isnan(s[2]) else s[2] - s[0] for s in stats]]
        ax.bar(range(len(groups)), means, yerr=err, capsize=3,
               color=[plt.get_cmap("tab10")(k % 10) for k in range(len(groups))])
        ax.set_xticks(range(len(groups)), [g.name for g in groups], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(label)
        ax.axhline(0, color="0.5", lw=0.7)
    fig.suptitle(f"{title} (mean, 95% t CI over seeds)")
    fig.tight_layout()
    return fig


def probe_panel(name: str, by_key: dict[str, dict[str, tuple[list[float], list[float]]]]) -> Figure:
    """One probe: a small panel per headline key against step, one line per arm (mean over seeds)."""
    keys = list(by_key)[:9]
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for arm, (x, y) in by_key[key].items():
            ax.plot(x, y, marker="o", ms=3, label=arm)
        ax.set_title(key, fontsize=8)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(f"probe: {name} (mean over seeds)")
    fig.tight_layout()
    return fig
