"""The report: ``build_report(path)`` writes ``path/report/index.html``, ``figures/*.png|pdf`` and the
results exports, for one run folder, a ``sparsecl run`` output folder or a sweep folder."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from sparsecl.metrics.table import tokenizer_label, tokenizers_differ
from sparsecl.report import figures as F
from sparsecl.report.data import DomainData, domain_data, eval_tokens
from sparsecl.report.export import export
from sparsecl.report.html import esc as _e
from sparsecl.report.html import figure, num, page, pval, table
from sparsecl.report.load import Results, load_results
from sparsecl.report.probes import probe_series
from sparsecl.stats import analysis as A
from sparsecl.stats.confounds import confounds
from sparsecl.stats.forgetting_law import law_points, spearman_with_ci
from sparsecl.stats.labels import FORGOT_POS, MEASURES, SIGNS_NOTE, STATS_MEASURES, forgot_more
from sparsecl.stats.stages import stage_rows

SIGNS = (SIGNS_NOTE + " Intervals are 95% Student t over seeds; percentile-bootstrap intervals "
         f"only where an arm has n >= {A.BOOT_MIN_N} seeds.")
RULES = (f"Verdict rules: a test needs n >= {A.MIN_SEEDS} paired seeds, else 'not testable (n = k)'; identical "
         "paired differences have no p-value ('no variance'); Holm correction within each hypothesis's family. "
         "<b>Supported</b>: Holm p &lt; 0.05 in the claimed direction; <b>contradicted</b>: Holm p &lt; 0.05 in "
         "the opposite direction; <b>inconclusive</b>: Holm p >= 0.05. H3 pairs arms by realised density (within 1%).")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]


def build_report(path: Path) -> Path:
    res = load_results(path)
    out = res.root / "report"
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    for old in list(figdir.glob("*.png")) + list(figdir.glob("*.pdf")):
        old.unlink()  # figures of an earlier report whose arms may no longer exist
    gs = A.groups(res.runs)
    parts: list[str] = [f"<h1>sparsecl report</h1><p class='note'>{len(res.runs)} run(s) in "
                        f"<code>{_e(res.root)}</code>; {len(gs)} arm(s) with finished runs.</p>"]
    parts.append(_status_section(res))
    if gs:
        done = [r for r in res.runs if r.summary is not None]
        tokens = eval_tokens(done, res.evals)
        data_rows, why = domain_data(done)
        overlap = {d.domain: d.overlap for d in data_rows if d.overlap is not None}
        parts.append(_evidence_sections(gs, tokens, overlap))
        parts.append(_data_section(res, tokens, data_rows, why))
        parts.append(_figure_sections(gs, res, figdir))
        parts.append(_stages_section(gs, res, figdir))
    csv_path, pq_path = export(res, out)
    parts.append(f"<h2>Exports</h2><p>Every evaluation row (run x evaluation x domain): <code>{csv_path.name}</code>, "
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
        s = r.summary
        cls = "ok" if r.status == "done" else "bad"
        group, f, bwt, fwt, final = ((None,) * 5 if s is None
                                     else (s.group, s.avg_forgetting, s.bwt, s.fwt, s.final_avg_loss))
        rows.append([f"<span>{_e(r.run_id)}</span>", _e(group or r.config.get("group") or ""),
                     _e(r.config.get("seed", "")), f"<span class='{cls}'>{_e(r.status)}</span>",
                     num(f, signed=True), num(bwt, signed=True), num(fwt, signed=True), num(final),
                     _e(r.error or "")])
    header = ["run", "arm", "seed", "status", *(MEASURES[k].short for k in ("avg_forgetting", "bwt", "fwt",
                                                                         "final_avg_loss")), "error"]
    summaries = [r.summary for r in res.runs if r.summary is not None]
    if tokenizers_differ(summaries):  # loss per token does not compare across tokenizers; bits per byte does
        header[-1:-1] = ["tokenizer", "final avg bits per byte"]
        for row, r in zip(rows, res.runs, strict=True):
            s = r.summary
            row[-1:-1] = ["", num(None)] if s is None else [_e(tokenizer_label(s)), num(s.final_avg_bpb)]
    return f"<h2>Runs</h2><p>{_e(text)}.</p>" + table(header, rows, raw=True)


ABBREV = {k: MEASURES[k].abbrev for k in STATS_MEASURES}
"""Short column names for the arms table (spelled out in the note above it) so it fits the page."""


def _cell(cell: dict[str, Any], signed: bool, low: str, high: str) -> str:
    """Mean with its interval; 'n = 1' instead of an interval for one seed, '-' where the arm lacks the key."""
    if cell["n"] == 0:
        return "-"
    m = num(cell["mean"], signed=signed)
    if cell["n"] < 2 or math.isnan(cell[low]):
        return f"{m} (n = {cell['n']})"
    return f"{m} [{num(cell[low], signed=signed)}, {num(cell[high], signed=signed)}]"


def _stack(cell: str) -> str:
    """The interval under the mean (escaped, for a raw table cell), so eight metric columns fit the page."""
    return _e(cell).replace(" [", "<br>[", 1)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _evidence_sections(gs: list[A.ArmGroup], eval_tokens: dict[str, int], overlap: dict[str, float]) -> str:
    parts = ["<h2>Verdicts</h2>", f"<p class='note'>{SIGNS}</p>", f"<p class='note'>{RULES}</p>"]
    v = A.verdicts(gs)
    parts.append(table(["hypothesis", "claim", "compared", "n (seeds)", "test", "effect", "p (Holm)", "verdict"],
                       [[r["hypothesis"], r["claim"], r.get("comparison", "-"), r["n_text"], r["test"],
                         r["effect"] if isinstance(r["effect"], str) else num(r["effect"], 4, signed=True),
                         pval(r["p"]), r["verdict"]] for r in v]))
    parts.append(f"<p class='note'>H1 effect = F(dense) - F(sparse): {forgot_more('dense')}. H3 effect = "
                 "F(a) - F(b). The headline effect is the median comparison's mean difference with its 95% t CI. "
                 "H2 effect = the earliest reliable crossover phase [95% bootstrap CI over seeds]; 'none' = "
                 "resamples that never cross within the schedule.</p>")
    for hyp in v:
        parts.append(f"<h3>{_e(hyp['hypothesis'])}: {_e(hyp['claim'])}</h3>")
        threats = confounds(hyp, gs, eval_tokens, overlap)
        if threats:
            parts.append("<p><b>Threats to validity for these runs</b></p><ul>"
                         + "".join(f"<li>{_e(t)}</li>" for t in threats) + "</ul>")
        if hyp["hypothesis"] == "H2":
            parts.append(_crossover_table(hyp["rows"]))
        else:
            parts.append(_comparison_table(hyp["rows"]))
    parts.append(_arms_tables(gs))
    parts.append(_bpb_table(gs))
    curve = A.density_curve(gs)
    if sum(len(p) for p in curve.values()) > 1:
        parts.append("<h2>Density-forgetting curve</h2>")
        parts.append(table(["line", "arm", "topology", "realised density", "n", MEASURES["avg_forgetting"].short,
                            "95% t CI"],
                           [[name, p["arm"], p["topology"], f"{p['density']:.4f}", str(p["n"]),
                             num(p["mean"], 4, True),
                             f"[{num(p['lo'], 4, True)}, {num(p['hi'], 4, True)}]" if p["n"] > 1 else "n = 1"]
                            for name, pts in curve.items() for p in pts]))
    return "\n".join(parts)


def _comparison_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p class='note'>No comparison in these runs.</p>"
    body = [[r["comparison"], str(r["n"]), f"{_pct(r['density_a'])} / {_pct(r['density_b'])}",
             num(r["effect"], 4, signed=True), f"[{num(r['ci_low'], 4, True)}, {num(r['ci_high'], 4, True)}]",
             pval(r["p_t"]), pval(r["p_t_holm"]), pval(r["p_wilcoxon"]), pval(r["p_wilcoxon_holm"]),
             f"{_pct(r['dead_a'])} / {_pct(r['dead_b'])}", f"{num(r['nf_a'], 3, True)} / {num(r['nf_b'], 3, True)}",
             f"{num(r['drop_a'])} / {num(r['drop_b'])}", r["verdict"]] for r in rows]
    return (table(["a - b", "n", "realised density a / b", f"mean diff F ({forgot_more('a')})", "95% t CI",
                   "p t", "p t (Holm)", "p Wilcoxon", "p Wilcoxon (Holm)", "dead units a / b",
                   f"F/D a / b ({FORGOT_POS})", "learned drop D a / b", "verdict"], body)
            + "<p class='note'>Holm correction within the hypothesis's family of testable comparisons. Dead units: "
              "fraction of the masked layers' output units with no input connection. F/D: forgetting divided by "
              "how much the domain was learned (DESIGN §10); '-' where the summaries predate these keys.</p>")


def _crossover_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p class='note'>No dense/sparse naive pair in these runs.</p>"
    body = [[r["comparison"], r["reference"], num(r["sparse_nonzero"], 0), num(r["dense_params"], 0), str(r["n"]),
             str(r["phases"]), r["text"], num(r["frac_crossed"], 2), "yes" if r["starts_worse"] else "no",
             r["verdict"]] for r in rows]
    return (table(["sparse vs dense", "reference", "sparse nonzero params", "dense params", "n", "phases",
                   "crossover phase [95% bootstrap CI]", "resamples that cross", "sparse starts worse", "verdict"],
                  body)
            + "<p class='note'>A crossover counts only when at least 97.5% of the bootstrap resamples cross (a "
              "finite CI) and n >= 3. 'same shape': the dense model with the sparse model's widths; "
              "'iso-parameter': a dense model whose parameter count is within 3% of the sparse model's nonzeros; "
              "'iso-masked-parameter': the configured dense model, when matching=masked_params widened the sparse "
              "one until its masked layers' nonzeros match the dense model's.</p>")


def _arms_tables(gs: list[A.ArmGroup]) -> str:
    rows = A.arm_rows(gs)
    parts = ["<h2>Arms</h2>",
             table(["arm", "n", "method", "topology", "density (configured)", "density (realised)",
                    "nonzero params", "dead units"],
                   [[r["arm"], str(r["n"]), r["method"], r["topology"], f"{r['density']:.4f}",
                     f"{r['realised_density']:.4f}", num(r["params_nonzero"], 0), _pct(r["dead_unit_fraction"])]
                    for r in rows]),
             "<p class='note'>Mean over seeds [95% t CI]. " + "; ".join(
                 f"<b>{ABBREV[m]}</b> = {_e(label)}" for m, label in A.METRICS.items())
             + ". BWT first: against the end of the first phase that trained each domain (the form DESIGN §5 "
               "defines); BWT last: against the last phase that trained it (differs when domains recur).</p>",
             table(["arm", "n"] + [ABBREV[m] for m in A.METRICS],
                   [[_e(r["arm"]), str(r["n"])] + [_stack(_cell(r[m], m != "final_avg_loss", "t_lo", "t_hi"))
                                                   for m in A.METRICS] for r in rows], raw=True)]
    big = [r for r in rows if r["avg_forgetting"]["n"] >= A.BOOT_MIN_N]
    if big:
        parts.append(f"<p class='note'>Percentile-bootstrap 95% CIs, for arms with n >= {A.BOOT_MIN_N} seeds only."
                     "</p>")
        parts.append(table(["arm", "n"] + [ABBREV[m] for m in A.METRICS],
                           [[_e(r["arm"]), str(r["n"])] + [_stack(_cell(r[m], m != "final_avg_loss", "boot_lo",
                                                                         "boot_hi")) for m in A.METRICS]
                            for r in big], raw=True))
    else:
        parts.append(f"<p class='note'>No bootstrap CIs: no arm has n >= {A.BOOT_MIN_N} seeds, and below that a "
                     "percentile bootstrap over seeds is little more than [min, max].</p>")
    return "\n".join(parts)


def _bpb_table(gs: list[A.ArmGroup]) -> str:
    """Final bits per byte per domain (last row of ``bpb_matrix``), mean over seeds."""
    domains: list[str] = []
    body = []
    for g in gs:
        mats = [(s.domains, s.bpb_matrix) for s in (r.summary for r in g.runs)
                if s is not None and s.bpb_matrix and s.domains]
        if not mats:
            continue
        domains = domains or list(mats[0][0])
        finals = [dict(zip(d, m[-1], strict=True)) for d, m in mats]
        body.append([g.name, str(len(finals))] + [num(sum(f[d] for f in finals) / len(finals)) if
                                                  all(d in f for f in finals) else "-" for d in domains])
    if not body:
        return ""
    return ("<h2>Bits per byte</h2><p class='note'>Final validation loss in <b>bits per byte</b> (bpb: the summed "
            "token NLL in bits over the UTF-8 bytes those tokens decode to; comparable across tokenizers), after "
            "the last phase, mean over seeds. The full matrices (rows = after phase j, columns = domains) are "
            "<code>bpb_matrix</code> in each summary.json and the <code>bpb</code> column of results.csv.</p>"
            + table(["arm", "n"] + domains, body))


def _data_section(res: Results, eval_tokens: dict[str, int], overlap_rows: list[DomainData],
                  why: str | None) -> str:
    parts = ["<h2>Data</h2>"]
    if overlap_rows:
        parts.append(table(["domain", "source", "train documents", "validation documents", "train bytes",
                            "validation bytes", "validation lines also in training", "evaluation tokens"],
                           [[d.domain, d.source, f"{d.train_docs:,}", f"{d.val_docs:,}", f"{d.train_bytes:,}",
                             f"{d.val_bytes:,}", _pct(d.overlap),
                             f"{eval_tokens[d.domain]:,}" if d.domain in eval_tokens else "-"]
                            for d in overlap_rows]))
        if why:
            parts.append(f"<p class='note'>{_e(why)}.</p>")
        parts.append("<p class='note'>Documents re-read from the first run's data config with the training split. "
                     "Overlap counts validation lines of 20+ characters that occur verbatim in training. "
                     "Evaluation tokens: tokens scored per domain in one evaluation (the fewest over runs).</p>")
    else:
        parts.append(f"<p class='note'>Per-domain documents and bytes unavailable: {_e(why or 'no domains')}.</p>")
        if eval_tokens:
            parts.append(table(["domain", "evaluation tokens"], [[d, f"{n:,}"] for d, n in eval_tokens.items()]))
    return "\n".join(parts)


def _boundaries(gs: list[A.ArmGroup]) -> list[int]:
    """Global steps at which phases end, from the first summary."""
    s = next((r.summary for g in gs for r in g.runs if r.summary is not None and r.summary.phases), None)
    out, step = [], 0
    for ph in s.phases if s is not None else []:
        step += int(ph.steps)
        out.append(step)
    return out


def _stages_section(gs: list[A.ArmGroup], res: Results, figdir: Path) -> str:
    """Task accuracy per phase for arms with task domains, and forgetting against the forgetting-law KL."""
    parts = []
    rows = []
    for g in gs:
        for r in g.runs:
            staged = r.summary.stages if r.summary is not None else {}
            for t, accs in enumerate(staged.get("task_accuracy") or []):
                obj = "init" if t == 0 else (staged.get("objectives") or ["lm"] * t)[t - 1]
                cells = [f"{task} {num(a, 3)}" for task, a in zip(staged.get("tasks", []), accs, strict=False)]
                rows.append([r.run_id, str(t), obj, ", ".join(cells)])
    if rows:
        parts.append("<h2>Training stages: task accuracy</h2><p class='note'>Greedy exact-match accuracy on each "
                     "task's validation prompts after each phase.</p>")
        parts.append(table(["run", "after phase", "objective", "accuracy per task"], rows))
    pairs = stage_rows([r for g in gs for r in g.runs])
    if pairs:
        def ci(t: tuple[float, float, float]) -> str:
            return f"{num(t[0], 3, True)} [{num(t[1], 3, True)}, {num(t[2], 3, True)}]"

        parts.append("<h2>SFT against RL from the same pretrained model</h2><p class='note'>Forgetting = mean loss "
                     f"increase of the pretraining LM domains since the end of pretraining ({FORGOT_POS}). Equal "
                     "compute: both at the end of the last phase (same optimizer steps). Matched accuracy: SFT at "
                     "its first evaluation, from the end of pretraining on, whose task accuracy reaches RL's final "
                     "accuracy (its last one if none does; 'reached' counts the seeds where one did). Means with "
                     "95% t intervals over paired seeds.</p>")
        parts.append(table(["density", "method", "n", "task acc SFT / RL (end)", "forgetting SFT / RL (end)",
                            "SFT - RL, equal compute", "SFT acc at match (reached)", "SFT forgetting at match",
                            "SFT - RL, matched accuracy"],
                           [[num(r["density"], 3), r["method"], str(r["n"]),
                             f"{num(r['acc_sft'][0], 3)} / {num(r['acc_rl'][0], 3)}",
                             f"{num(r['forget_sft'][0], 3, True)} / {num(r['forget_rl'][0], 3, True)}",
                             ci(r["diff_equal_compute"]),
                             f"{num(r['acc_sft_matched'][0], 3)} ({r['reached']}/{r['n']})",
                             num(r["forget_sft_matched"][0], 3, True), ci(r["diff_matched"])] for r in pairs]))
    points = law_points([r for g in gs for r in g.runs])
    if points:
        corr = spearman_with_ci(points)
        fig = F.forgetting_law_plot(points, corr)
        rho = "n/a" if corr["rho"] is None else f"{corr['rho']:+.3f}"
        rho_ci = ("no CI (needs 3 runs)" if corr["lo"] is None
                  else f"95% run-bootstrap CI [{corr['lo']:+.3f}, {corr['hi']:+.3f}]")
        parts.append("<h2>Forgetting law (Shenfeld et al. 2025)</h2><p>Each point is one phase of one run: the "
                     "forward KL(pi_before || pi_after) on the new phase's data (probe <code>forgetting_kl</code>) "
                     f"against the mean loss increase of the old LM domains during that phase. Spearman rho = {rho}, "
                     f"{rho_ci}; {corr['n_points']} points from {corr['n_runs']} runs.</p>")
        if fig is not None:
            parts.append(figure(F.save(fig, figdir, "forgetting_law"), "Forgetting against the KL probe"))
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
            fig = F.probe_panel(name, by_key, _boundaries(gs))
            parts.append(figure(F.save(fig, figdir, f"probe_{_slug(name)}"), f"probe {name}"))
        parts.append("</div>")
    return "\n".join(parts)
