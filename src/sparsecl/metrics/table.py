"""Plain-text tables for the terminal, with signs stated in the headers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sparsecl.stats import mean_ci
from sparsecl.stats.labels import FORGETTING_MEASURES, MEASURES
from sparsecl.store.record import RunSummary, as_summary

SummaryLike = RunSummary | dict[str, Any]
"""What the tables accept: the typed summary, or its JSON object (read through ``as_summary``)."""


def _f(x: float | None, nd: int = 3, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.{nd}f}" if signed else f"{x:.{nd}f}"


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]])


def tokenizer_label(s: SummaryLike) -> str:
    """kind:fingerprint of a summary's tokenizer; summaries from before tokenizers existed used bytes."""
    t = as_summary(s).tokenizer or {"kind": "byte", "fingerprint": "byte"}
    return t["kind"] if t["kind"] == "byte" else f"{t['kind']}:{t.get('vocab_size')}:{t['fingerprint'][:8]}"


def tokenizers_differ(summaries: Sequence[SummaryLike]) -> bool:
    """Losses per token of different tokenizers do not compare; bits per byte do (DESIGN §10)."""
    return len({tokenizer_label(s) for s in summaries}) > 1


def loss_matrix_table(summary: SummaryLike, key: str = "loss_matrix") -> str:
    s = as_summary(summary)
    header = ["after phase"] + s.domains
    rows = []
    for j, row in enumerate(s.bpb_matrix if key == "bpb_matrix" else s.loss_matrix):
        label = "0 (init)" if j == 0 else f"{j} ({'+'.join(s.phases[j - 1].domains)})"
        rows.append([label] + [_f(v) for v in row])
    return _grid(header, rows)


FORGETTING_HEADERS = [MEASURES[k].column for k in FORGETTING_MEASURES]
"""Forgetting columns of both tables: absolute F, F over the learned drop D, and BWT against the first and
the last phase that trained each domain (the two coincide when no domain recurs)."""


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def comparison_table(runs: Sequence[SummaryLike]) -> str:
    """One row per run; with more than one tokenizer, also each run's tokenizer and final average bpb."""
    summaries = [as_summary(s) for s in runs]
    header = ["arm", "method", "topology", "density", "dead units", "params_total", "params_nonzero",
              *FORGETTING_HEADERS, MEASURES["fwt"].column,
              MEASURES["final_avg_loss"].column]
    rows = [[s.name, s.method, s.topology, f"{s.density:.3f}", _pct(s.dead_unit_fraction),
             f"{s.params_total:,}", f"{s.params_nonzero:,}", _f(s.avg_forgetting, signed=True),
             _f(s.avg_normalised_forgetting, signed=True), _f(s.bwt, signed=True),
             _f(s.bwt_last, signed=True), _f(s.fwt, signed=True), _f(s.final_avg_loss)]
            for s in summaries]
    if tokenizers_differ(summaries):
        header += ["tokenizer", "final avg bpb"]
        for r, s in zip(rows, summaries, strict=True):
            r += [tokenizer_label(s), _f(s.final_avg_bpb)]
    return _grid(header, rows)


def _ci(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    m, h = mean_ci(vals)
    return f"{m:+.3f}" if h != h else f"{m:+.3f} ± {h:.3f}"


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _overheads(groups: dict[str, list[RunSummary]]) -> dict[str, str]:
    """Per arm: mean ms/step divided by that of the naive arm at the same target density ('-' if none)."""
    naive = {ss[0].target_density: _mean([s.ms_per_step for s in ss])
             for ss in groups.values() if ss[0].method == "naive"}
    out = {}
    for g, ss in groups.items():
        base, ms = naive.get(ss[0].target_density), _mean([s.ms_per_step for s in ss])
        out[g] = f"{ms / base:.2f}x" if base and ms is not None else "-"
    return out


def grouped_table(runs: Sequence[SummaryLike]) -> str:
    """Mean ± 95% t-interval over the seeds of each arm, plus method memory and step time vs naive."""
    groups: dict[str, list[RunSummary]] = {}
    for s in map(as_summary, runs):
        groups.setdefault(s.group or s.name, []).append(s)
    over = _overheads(groups)
    header = ["arm", "n seeds", "method", "density", "dead units", *FORGETTING_HEADERS,
              MEASURES["fwt"].column, MEASURES["final_avg_loss"].column, "method memory", "ms/step", "time vs naive"]
    rows = []
    for g, ss in groups.items():
        mem, ms = _mean([s.method_memory_bytes for s in ss]), _mean([s.ms_per_step for s in ss])
        rows.append([g, str(len(ss)), ss[0].method, f"{ss[0].density:.3f}",
                     _pct(_mean([s.dead_unit_fraction for s in ss])),
                     _ci([s.avg_forgetting for s in ss]), _ci([s.avg_normalised_forgetting for s in ss]),
                     _ci([s.bwt for s in ss]), _ci([s.bwt_last for s in ss]),
                     _ci([s.fwt for s in ss]), _ci([s.final_avg_loss for s in ss]).lstrip("+"),
                     _bytes(mem), _f(ms, 1), over[g]])
    return _grid(header, rows)


def report_text(runs: Sequence[SummaryLike]) -> str:
    summaries = [as_summary(s) for s in runs]
    parts: list[str] = []
    bpb = tokenizers_differ(summaries)
    for s in summaries:
        if bpb:
            parts.append(f"== {s.name} ({tokenizer_label(s)}): validation bits per byte (lower is better) per "
                         f"domain after each phase")
            parts.append(loss_matrix_table(s, "bpb_matrix"))
        else:
            parts.append(f"== {s.name}: validation loss (nats/token, lower is better) per domain after each phase")
            parts.append(loss_matrix_table(s))
        parts.append("")
    if bpb:
        parts.append("== the runs use different tokenizers: compare them in bits per byte, not loss per token")
    parts.append("== comparison (loss form; F = final loss minus best loss since the domain was learned; D = loss "
                 "before first training minus that best loss; BWT first/last = loss at the end of the first/last "
                 "phase that trained a domain minus the final loss)")
    parts.append(comparison_table(summaries))
    if len({s.group or s.name for s in summaries}) < len(summaries):
        parts.append("\n== per arm over seeds: mean ± 95% CI half-width (Student t)")
        parts.append(grouped_table(summaries))
    return "\n".join(parts)
