"""The report: ``build_report(path)`` writes ``path/report/index.html``, ``figures/*.png|pdf`` and the
results exports, for one run folder, a ``sparsecl run`` output folder or a sweep folder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sparsecl.metrics.table import tokenizer_label, tokenizers_differ
from sparsecl.report import figures as F
from sparsecl.report.export import export
from sparsecl.report.html import esc as _e
from sparsecl.report.html import figure, num, page, pval, table
from sparsecl.report.load import Results, load_results
from sparsecl.report.probes import probe_series
from sparsecl.stats import analysis as A

SIGNS = ("Signs (loss form, lower loss is better): <b>forgetting</b> F = final loss minus the best loss since the "
         "domain was learned, <b>+ = forgot</b>; <b>BWT</b> = loss right after learning minus final loss, "
         "<b>- = forgetting</b>; <b>FWT</b> = init loss minus the loss just before the domain's first phase, "
         "<b>+ = earlier phases helped</b>. Intervals are 95%: Student t over seeds, and a percentile bootstrap.")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]


def _ci(cell: dict[str, Any], signed: bool = True) -> str:
    if cell["n"] == 0:
        return "-"
    m = num(cell["mean"], signed=signed)
    if cell["n"] < 2:
        return m
    return f"{m} [{num(cell['t_lo'], signed=signed)}, {num(cell['t_hi'], signed=signed)}]"


def _boot(cell: dict[str, Any], signed: bool = True) -> str:
    if cell["n"] < 2:
        return "-"
    return f"[{num(cell['boot_lo'], signed=signed)}, {num(cell['boot_hi'], signed=signed)}]"


def build_report(path: Path) -> Path:
    res = load_results(path)
    out = res.root / "report"
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    for old in list(figdir.glob("*.png")) + list(figdir.glob("*.pdf")):
        old.unlink()  # figures of an earlier report whose arms may no longer exist
    gs = A.groups(res.runs)
    parts: list[str] = [f"<h1>sparsecl report</h1><p class='note'>{len(res.runs)} run(s) in "
                        f"<code>{res.root}</code>; {len(gs)} arm(s) with finished runs.</p>"]
    parts.append(_status_section(res))
    if gs:
        parts.append(_evidence_sections(gs))
        parts.append(_figure_sections(gs, res, figdir))
    csv_path, pq_path = export(res, out)
    parts.append(f"<h2>Data</h2><p>Every evaluation row (run x evaluation x domain): <code>{csv_path.name}</code>, "
                 f"<code>{pq_path.name}</code>; figures as PNG and PDF in <code>figures/</code>.</p>")
    html_path = out / "index.html"
    tmp = out / ".index.html.tmp"
    tmp.write_text(page(f"sparsecl report: {res.root.name}", "\n".join(parts)))
    tmp.replace(html_path)
    return html_path


def _status_section(res: Results) -> str:
    counts: dict[str, int] = {}
    for r in res.runs:
        counts[r.status] = counts.get(r.status, 0) + 1
    text = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    rows = []
    for r in res.runs:
        s = r.summary or {}
        cls = "ok" if r.status == "done" else "bad"
        rows.append([f"<span>{_e(r.run_id)}</span>", _e(s.get("group") or r.config.get("group") or ""),
                     _e(r.config.get("seed", "")), f"<span class='{cls}'>{_e(r.status)}</span>",
                     num(s.get("avg_forgetting"), signed=True), num(s.get("bwt"), signed=True),
                     num(s.get("fwt"), signed=True), num(s.get("final_avg_loss")), _e(r.error or "")])
    header = ["run", "arm", "seed", "status", "avg forgetting (+ = forgot)", "BWT (- = forgetting)",
              "FWT (+ = helped)", "final avg seen loss", "error"]
    summaries = [r.summary for r in res.runs if r.summary]
    if tokenizers_differ(summaries):  # loss per token does not compare across tokenizers; bits per byte does
        header[-1:-1] = ["tokenizer", "final avg bits per byte"]
        for row, r in zip(rows, res.runs, strict=True):
            s = r.summary or {}
            row[-1:-1] = [_e(tokenizer_label(s)) if s else "", num(s.get("final_avg_bpb"))]
    return f"<h2>Runs</h2><p>{_e(text)}.</p>" + table(header, rows, raw=True)


def _evidence_sections(gs: list[A.ArmGroup]) -> str:
    parts = ["<h2>Verdicts</h2>", f"<p class='note'>{SIGNS}</p>"]
    v = A.verdicts(gs)
    parts.append(table(["hypothesis", "claim", "compared", "n (seeds)", "test", "effect", "p (Holm)", "verdict"],
                       [[r["hypothesis"], r["claim"], r.get("comparison", "-"), str(r["n"]), r["test"],
                         r["effect"] if isinstance(r["effect"], str) else num(r["effect"], 4, signed=True),
                         pval(r["p"]), r["verdict"]] for r in v]))
    parts.append("<p class='note'>H1 effect = F(dense) - F(sparse): + means dense forgot more. H3 effect = "
                 "F(a) - F(b). H2 effect = crossover phase [95% bootstrap CI over seeds]; 'none' = no crossover "
                 "within the schedule.</p>")
    rows = A.arm_rows(gs)
    parts.append("<h2>Arms (mean over seeds, 95% t CI; bootstrap CI alongside)</h2>")
    header = ["arm", "n", "method", "topology", "density"]
    for label in A.METRICS.values():
        header += [label, "bootstrap CI"]
    body = []
    for r in rows:
        line = [r["arm"], str(r["n"]), r["method"], r["topology"], f"{r['density']:.3f}"]
        for m in A.METRICS:
            signed = m != "final_avg_loss"
            line += [_ci(r[m], signed), _boot(r[m], signed)]
        body.append(line)
    parts.append(table(header, body))
    comps = A.comparison_rows(gs)
    if comps:
        parts.append("<h2>Paired comparisons by seed (average forgetting)</h2>")
        parts.append(table(["hyp.", "a - b", "n", "mean diff (+ = a forgot more)", "95% t CI", "p paired t",
                            "p t (Holm)", "p Wilcoxon", "p Wilcoxon (Holm)", "verdict"],
                           [[r["hypothesis"], r["comparison"], str(r["n"]), num(r["effect"], 4, signed=True),
                             f"[{num(r['ci_low'], 4, True)}, {num(r['ci_high'], 4, True)}]", pval(r["p_t"]),
                             pval(r["p_t_holm"]), pval(r["p_wilcoxon"]), pval(r["p_wilcoxon_holm"]), r["verdict"]]
                            for r in comps]))
        parts.append("<p class='note'>Holm correction within each hypothesis's family. With 3 seeds the exact "
                     "two-sided Wilcoxon p cannot go below 0.25; use 6 or more seeds for it to be informative.</p>")
    cross = A.crossover_rows(gs)
    if cross:
        parts.append("<h2>Crossover (H2): first phase after which sparse stays below dense in A(j)</h2>")
        parts.append(table(["sparse vs dense", "n", "phases", "crossover phase [95% bootstrap CI]",
                            "resamples that cross", "sparse starts worse", "verdict"],
                           [[r["comparison"], str(r["n"]), str(r["phases"]), r["text"],
                             num(r["frac_crossed"], 2), "yes" if r["starts_worse"] else "no", r["verdict"]]
                            for r in cross]))
    curve = A.density_curve(gs)
    if sum(len(p) for p in curve.values()) > 1:
        parts.append("<h2>Density-forgetting curve</h2>")
        parts.append(table(["line", "density", "arm", "n", "avg forgetting (+ = forgot)", "95% t CI"],
                           [[name, f"{p['density']:.3f}", p["arm"], str(p["n"]), num(p["mean"], 4, True),
                             f"[{num(p['lo'], 4, True)}, {num(p['hi'], 4, True)}]"]
                            for name, pts in curve.items() for p in pts]))
    return "\n".join(parts)


def _figure_sections(gs: list[A.ArmGroup], res: Results, figdir: Path) -> str:
    parts = ["<h2>Figures</h2>"]
    summary_figs: list[str] = []
    fig = F.crossover_plot(gs)
    if fig is not None:
        summary_figs.append(figure(F.save(fig, figdir, "crossover"), "Average seen-domain loss A(j) per arm"))
    curve = A.density_curve(gs)
    if len({p["density"] for pts in curve.values() for p in pts}) > 1:
        fig = F.density_plot(curve)
        if fig is not None:
            summary_figs.append(figure(F.save(fig, figdir, "forgetting_vs_density"), "Forgetting against density"))
    fig = F.comparison_bars(gs, "all arms")
    if fig is not None:
        summary_figs.append(figure(F.save(fig, figdir, "arms"), "Arm comparison"))
    for dens in sorted({g.density for g in gs if g.density < 1}):
        same = [g for g in gs if g.density == dens]
        if len({g.topology for g in same}) > 1:
            fig = F.comparison_bars(same, f"topologies at density {dens:g}")
            if fig is not None:
                summary_figs.append(figure(F.save(fig, figdir, f"topology_d{dens:g}"), f"Topologies at {dens:g}"))
    if len({g.method for g in gs}) > 1:
        fig = F.comparison_bars(gs, "methods")
        if fig is not None:
            summary_figs.append(figure(F.save(fig, figdir, "methods"), "Methods"))
    parts.append("<div class='grid'>" + "".join(summary_figs) + "</div>")
    parts.append("<h3>Forgetting curves and loss matrices per arm</h3>")
    if not res.has_index:
        parts.append("<p class='note'>No index.sqlite next to these runs: forgetting curves need its "
                     "evaluation rows.</p>")
    for g in gs:
        cells = []
        fig = F.forgetting_curves(g, res.evals)
        if fig is not None:
            cells.append(figure(F.save(fig, figdir, f"curves_{_slug(g.name)}"), f"{g.name}: loss vs step"))
        fig = F.loss_heatmap(g)
        if fig is not None:
            cells.append(figure(F.save(fig, figdir, f"matrix_{_slug(g.name)}"), f"{g.name}: loss matrix"))
        parts.append("<div class='grid'>" + "".join(cells) + "</div>")
    series = probe_series(gs, res.probes)
    if series:
        parts.append("<h3>Probes</h3><div class='grid'>")
        for name, by_key in series.items():
            fig = F.probe_panel(name, by_key)
            parts.append(figure(F.save(fig, figdir, f"probe_{_slug(name)}"), f"probe {name}"))
        parts.append("</div>")
    return "\n".join(parts)
