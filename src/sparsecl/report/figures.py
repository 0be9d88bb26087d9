"""The report's figures (matplotlib, Agg backend), each saved as PNG and PDF.

Every function takes plain data and returns a ``Figure``; ``save`` writes it. Means are over the seeds of
an arm; bands and error bars are 95% Student-t intervals.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from sparsecl.probes import PROBES  # noqa: E402
from sparsecl.report.probes import MEANING, Band  # noqa: E402
from sparsecl.stats.analysis import ArmGroup  # noqa: E402
from sparsecl.stats.intervals import t_interval  # noqa: E402
from sparsecl.stats.labels import MEASURES, PHASE_FORGETTING  # noqa: E402
from sparsecl.store.record import PhaseRecord  # noqa: E402

PROBE_TEXT = {name: p.description for name, p in PROBES.items()}
plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3, "font.size": 9})


def save(fig: Figure, folder: Path, stem: str) -> Path:
    """Write ``stem.png`` and ``stem.pdf``; returns the PNG path."""
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / f"{stem}.png"
    fig.savefig(png, bbox_inches="tight")
    fig.savefig(folder / f"{stem}.pdf", bbox_inches="tight")
    plt.close(fig)
    return png


def _phase_label(phases: Sequence[PhaseRecord], j: int) -> str:
    return "init" if j == 0 else f"{j}:{'+'.join(phases[j - 1].domains)}"


def _mean_band(series: Sequence[Sequence[float | None]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95% t band over the rows (None: not measured, read as NaN)."""
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
    first = runs[0].summary
    phases = first.phases if first is not None else []
    domains = first.domains if first is not None else sorted({e["domain"] for e in evals[runs[0].run_id]})
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
        bound += ph.steps
        ax.axvline(bound, color="0.45", ls=":", lw=0.8)
        if len(phases) <= 12:
            ax.text(bound - ph.steps / 2, 1.01, "+".join(ph.domains), transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=7, color="0.3")
    ax.set_xlabel("training step (dotted lines: phase ends)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"{group.name}: loss per domain (n={len(runs)} seeds{', band = 95% t CI' if len(runs) > 1 else ''})",
                 pad=14)
    ax.legend(fontsize=7, ncol=min(len(domains), 5), loc="upper right")
    return fig


def loss_heatmap(group: ArmGroup) -> Figure | None:
    done = [r.summary for r in group.runs if r.summary is not None]
    if not done:
        return None
    s = done[0]  # the first finished run (the first may have failed)
    mats = [d.loss_matrix for d in done]
    L = np.mean(np.array(mats, dtype=float), axis=0)
    rows = [_phase_label(s.phases, j) for j in range(L.shape[0])]
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * L.shape[1], 1.0 + 0.28 * L.shape[0]))
    im = ax.imshow(L, aspect="auto", cmap="viridis_r")
    ax.set_xticks(range(L.shape[1]), s.domains, rotation=30, ha="right")
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
        curves = [s.avg_seen_loss_by_phase for s in (r.summary for r in g.runs)
                  if s is not None and s.avg_seen_loss_by_phase is not None]
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


def _yerr(stats: Sequence[tuple[float, float, float]]) -> list[list[float]]:
    """Error-bar lengths from (mean, lo, hi); NaN (no bar drawn) where there is no interval (n < 2): those
    points get an 'n = 1' mark instead of a zero-length bar that would pass for certainty."""
    return [[m - lo for m, lo, _ in stats], [hi - m for m, _, hi in stats]]


def density_plot(lines: dict[str, list[dict[str, Any]]]) -> Figure | None:
    """Average forgetting against realised density per line; the dense point is drawn and labelled 'dense'."""
    if not any(len(pts) for pts in lines.values()):
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in lines.items():
        x = [p["density"] for p in pts]
        y = [p["mean"] for p in pts]
        line = ax.errorbar(x, y, yerr=_yerr([(p["mean"], p["lo"], p["hi"]) for p in pts]), marker="o", capsize=3,
                           label=name)
        for p in pts:
            if p["topology"] == "dense":
                ax.plot([p["density"]], [p["mean"]], "s", ms=8, mfc="none", color=line.lines[0].get_color())
                ax.annotate(f"dense ({p['arm']})", (p["density"], p["mean"]), textcoords="offset points",
                            xytext=(-6, 8), ha="right", fontsize=7)
            if p["n"] == 1:
                ax.annotate("n = 1", (p["density"], p["mean"]), textcoords="offset points", xytext=(4, -10),
                            fontsize=7, color="#b00020")
    ax.set_xscale("log")
    ax.axhline(0, color="0.5", lw=0.7)
    ax.set_xlabel("realised density rho (log scale; 1 = dense, open square)")
    ax.set_ylabel(MEASURES["avg_forgetting"].label)
    ax.set_title("forgetting vs density (mean, 95% t CI over seeds; n = 1: no interval)")
    ax.legend(fontsize=7)
    return fig


def comparison_bars(groups: Sequence[ArmGroup], title: str) -> Figure | None:
    """Average forgetting and final average loss per arm, mean with 95% t CI; arms with one seed get no error
    bar and an 'n = 1' mark instead of a zero-length interval."""
    groups = [g for g in groups if g.values("avg_forgetting")]
    if not groups:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.1 * len(groups) + 3), 3.6))
    for ax, metric, label in ((axes[0], "avg_forgetting", MEASURES["avg_forgetting"].label),
                              (axes[1], "final_avg_loss", MEASURES["final_avg_loss"].label)):
        stats = [t_interval(g.values(metric)) for g in groups]
        ax.bar(range(len(groups)), [s[0] for s in stats], yerr=_yerr(stats), capsize=3,
               color=[plt.get_cmap("tab10")(k % 10) for k in range(len(groups))])
        for k, g in enumerate(groups):
            n = len(g.values(metric))
            ax.annotate(f"n = {n}", (k, stats[k][0]), textcoords="offset points", xytext=(0, 3), ha="center",
                        fontsize=7, color="#b00020" if n < 2 else "0.3")
        ax.set_xticks(range(len(groups)), [g.name for g in groups], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(label)
        ax.axhline(0, color="0.5", lw=0.7)
    fig.suptitle(f"{title} (mean, 95% t CI over seeds; n = 1: no interval)")
    fig.tight_layout()
    return fig


def probe_panel(name: str, by_key: dict[str, dict[str, Band]], boundaries: Sequence[int]) -> Figure:
    """One probe: a panel per headline key against step, one line per arm (mean over seeds) with its 95% t
    band, dotted phase boundaries, the y-axis units and a line saying what the probe means and what is bad."""
    keys = list(by_key)[:9]
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    unit, bad = MEANING.get(name, ("value", "no direction stated"))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows + 0.5), squeeze=False)
    colors = plt.get_cmap("tab10")
    arms = sorted({a for key in keys for a in by_key[key]})
    for ax, key in zip(axes.flat, keys, strict=False):
        for arm, band in by_key[key].items():
            c = colors(arms.index(arm) % 10)
            ax.plot(band.x, band.y, marker="o", ms=3, color=c, label=f"{arm} (n={band.n})")
            if band.n > 1:
                ax.fill_between(band.x, band.lo, band.hi, color=c, alpha=0.18, lw=0)
        for b in boundaries:
            ax.axvline(b, color="0.45", ls=":", lw=0.8)
        ax.set_title(key, fontsize=8)
        ax.set_xlabel("step (dotted: phase ends)")
        ax.set_ylabel(unit, fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=6)
    text = textwrap.fill(f"probe {name}: {PROBE_TEXT.get(name, name)}", 60 * cols)
    fig.suptitle(f"{text}\nbad direction: {bad}. Mean over seeds, band = 95% t CI", fontsize=8)
    fig.tight_layout()
    return fig


def forgetting_law_plot(points: Sequence[Any], corr: dict[str, Any]) -> Figure | None:
    """Per (run, phase): forgetting of the old LM domains against KL(before || after) on the new phase's data."""
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for obj in sorted({p.objective for p in points}):
        sel = [p for p in points if p.objective == obj]
        ax.scatter([p.kl_new for p in sel], [p.forgetting for p in sel], s=18, alpha=0.8,
                   label=f"phase objective {obj}")
    rho = "n/a" if corr["rho"] is None else f"{corr['rho']:+.2f}"
    ci = "" if corr["lo"] is None else f" [{corr['lo']:+.2f}, {corr['hi']:+.2f}]"
    ax.set_title(f"Spearman rho = {rho}{ci} ({corr['n_points']} points, {corr['n_runs']} runs)", fontsize=9)
    ax.set_xlabel("KL(pi_before || pi_after) on the new phase's data (nats/token)")
    ax.set_ylabel(PHASE_FORGETTING)
    ax.axhline(0, color="grey", lw=0.6)
    ax.legend(fontsize=7)
    return fig
