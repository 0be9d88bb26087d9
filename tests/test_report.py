"""The report: figures (PNG + PDF), exports, tables with signs, and a clean render in headless Chromium."""

from __future__ import annotations

import csv
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from _sweep_tiny import tiny

from sparsecl.report import build_report
from sparsecl.store.index import Index
from sparsecl.sweep import expand
from sparsecl.train.runner import run_experiment

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four finished runs (2 arms x 2 seeds), one failed run, and a probes table, as a sweep leaves them."""
    out = tmp_path_factory.mktemp("sweep")
    runs = expand(tiny(), [], {"sparse.density": [0.25, 1.0], "seed": [0, 1]})
    run_experiment([r.config for r in runs], out, progress_bar=False)
    idx = Index(out / "index.sqlite")
    try:
        idx.set_run("broken__s0", "broken__s0", "failed", config={"name": "broken__s0"},
                    error="ValueError: something went wrong")
        con = sqlite3.connect(out / "index.sqlite")
        assert con.execute("SELECT COUNT(DISTINCT probe) FROM probes").fetchone()[0] >= 10  # the default set ran
        con.close()
    finally:
        idx.close()
    build_report(out)
    return out


def _figures(out: Path) -> list[Path]:
    return sorted((out / "report" / "figures").glob("*.png"))


def test_every_figure_exists_as_png_and_pdf(sweep_dir: Path) -> None:
    names = {p.stem for p in _figures(sweep_dir)}
    expected = {"crossover", "forgetting_vs_density", "arms", "probe_dormant", "probe_plasticity"}
    for g in ("density-0.25", "density-1"):
        expected |= {f"curves_{g}", f"matrix_{g}"}
    assert expected <= names
    for stem in names:
        for ext in ("png", "pdf"):
            f = sweep_dir / "report" / "figures" / f"{stem}.{ext}"
            assert f.is_file() and f.stat().st_size > 1000, f
        assert (sweep_dir / "report" / "figures" / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        assert (sweep_dir / "report" / "figures" / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"


def test_html_is_self_contained_with_signed_headers(sweep_dir: Path) -> None:
    html = (sweep_dir / "report" / "index.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(_figures(sweep_dir))
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # nothing fetched from a network
    for header in ("avg forgetting (+ = forgot)", "BWT (- = forgot)", "FWT (+ = helped)", "p (Holm)"):
        assert header in html
    assert "H1" in html and "H2" in html and "H3" in html
    assert "something went wrong" in html and "broken__s0" in html  # failed runs are shown with their error


def test_exports_hold_one_row_per_run_evaluation_domain(sweep_dir: Path) -> None:
    import pyarrow.parquet as pq

    conn = sqlite3.connect(sweep_dir / "index.sqlite")
    try:
        ref = conn.execute("SELECT run_id, step, domain, loss FROM evals ORDER BY run_id, step, domain").fetchall()
    finally:
        conn.close()
    with (sweep_dir / "report" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    got = sorted((r["run_id"], int(r["step"]), r["domain"], float(r["loss"])) for r in rows)
    assert got == sorted(ref) and len(ref) == 4 * 7 * 3  # 4 runs x (init + 6 evals) x 3 domains
    table = pq.read_table(sweep_dir / "report" / "results.parquet").to_pylist()
    assert len(table) == len(rows)
    assert sorted((r["run_id"], r["step"], r["domain"], r["loss"]) for r in table) == sorted(ref)
    first = next(r for r in table if r["run_id"] == "density-0.25__s1" and r["step"] == 6)
    assert first["density"] == 0.25 and first["seed"] == 1 and first["phase_domains"] == "arith"
    assert first["phase_end"] is True and first["group"] == "density-0.25"


def test_single_run_folder(sweep_dir: Path) -> None:
    html = build_report(sweep_dir / "density-1__s0")
    assert html == sweep_dir / "density-1__s0" / "report" / "index.html" and html.is_file()
    with (html.parent / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["run_id"] for r in rows} == {"density-1__s0"} and len(rows) == 7 * 3
    assert (html.parent / "figures" / "curves_density-1.png").stat().st_size > 1000


def _chromium(url: str, tmp_path: Path) -> tuple[str, str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    proc = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    return proc.stdout, proc.stderr


def _console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_renders_in_headless_chromium_without_console_errors(sweep_dir: Path, tmp_path: Path) -> None:
    # the console capture works: a page that logs an error is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('deliberate-check')</script></body></html>")
    _, err = _chromium(bad.as_uri(), tmp_path)
    assert any("deliberate-check" in line for line in _console(err))
    dom, err = _chromium((sweep_dir / "report" / "index.html").as_uri(), tmp_path)
    assert _console(err) == []
    # the page's own check: every <img> decoded (naturalWidth > 0)
    m = re.search(r'data-figures-ok="([^"]*)"', dom)
    assert m is not None and m.group(1) == str(len(_figures(sweep_dir)))


def _hand_made(root: Path, arm: str, seed: int, density: float, forgetting: float, domains: dict[str, Path],
               **extra: object) -> None:
    """A finished run folder written by hand: resolved config.yaml and a summary.json with known numbers."""
    import json

    import yaml

    from sparsecl.config import build_config
    from sparsecl.config.parse import to_dict

    cfg = to_dict(build_config(tiny(name=f"{arm}__s{seed}", group=arm, seed=seed, schedule="a,b",
                                    sparse={"density": density},
                                    data={"val_fraction": 0.5, "domains": [
                                        {"name": n, "source": "txt", "path": str(p)} for n, p in domains.items()]})))
    run_dir = root / f"{arm}__s{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    bpb = 1.2 + 0.2 * seed
    summary = {"group": arm, "domains": ["a", "b"], "phases": [{"domains": ["a"], "steps": 6},
                                                                 {"domains": ["b"], "steps": 6}],
               "loss_matrix": [[2.0, 2.0], [1.0, 1.9], [1.0 + forgetting, 1.2]],
               "bpb_matrix": [[2.9, 2.9], [1.4, 2.7], [bpb, 1.7]], "acc_matrix": [[0.1, 0.1], [0.5, 0.1], [0.4, 0.4]],
               "avg_seen_loss_by_phase": [None, 1.0, 1.1 + forgetting / 2], "avg_forgetting": forgetting,
               "bwt": -forgetting, "fwt": 0.1, "final_avg_loss": 1.1 + forgetting / 2, "density": density,
               "params_total": 7472, "params_nonzero": round(7472 * density), "eval_tokens": {"a": 96, "b": 48},
               **extra}
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_report_on_one_and_two_seeds_says_not_testable_and_marks_n(tmp_path: Path) -> None:
    from sparsecl.config import DomainSpec
    from sparsecl.data.domains import load_documents, split_documents

    files = {}
    for name in ("a", "b"):
        files[name] = tmp_path / f"{name}.txt"
        files[name].write_text("\n\n".join(f"every {name} document repeats this line\n{name} document number {i:03d} "
                                           f"is unique" for i in range(40)))
    root = tmp_path / "runs"
    _hand_made(root, "dense", 0, 1.0, 0.5, files)
    for seed in (0, 1):
        _hand_made(root, "er", seed, 0.25, 0.2 + 0.02 * seed, files, dead_unit_fraction=0.125)
    html = build_report(root).read_text()
    text = re.sub(r"<[^>]+>", " ", html)
    assert text.count("not testable (n = 1)") >= 3  # H1 headline and row, H2 headline and row
    assert "seeds: 1 of 1 comparisons have fewer than 3 paired seeds (n = 1): they are not tested" in text
    assert "+0.500 (n = 1)" in text and "No bootstrap CIs" in text  # one seed: no interval, and no bootstrap
    assert re.search(r"\+0\.210\s+\[", text)  # two seeds: a t interval
    assert "dead units: er: 12.5% of the masked layers" in text
    assert "bits per byte" in text and "1.300" in text  # er's final bpb on a: mean of 1.2 and 1.4
    train, val = split_documents(load_documents(DomainSpec("a", "txt", str(files["a"]))), "sparsecl", 0.5)
    row = rf"\ba\s+txt\s+{len(train)}\s+{len(val)}\s+{sum(len(d.encode()) for d in train):,}\s+" \
          rf"{sum(len(d.encode()) for d in val):,}\s+50\.0%\s+96\b"
    assert re.search(row, text)  # half of every validation document's lines also occur in training
    assert "evaluation: 48 scored tokens per evaluation for b, the fewest of a 96, b 48" in text
    assert re.search(r"naive / er\s+dense\s+dense\s+1\.0000\s+1\s+\+0\.5000\s+n = 1", text)  # dense point: 'dense'


def test_data_section_skips_sources_too_large_to_re_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sparsecl.report import data as D
    from sparsecl.stats.analysis import Run

    big, small = tmp_path / "big.txt", tmp_path / "small.txt"
    big.write_text("a long enough document line number one\n\nanother document, also long enough\n")
    small.write_text("x" * 10)
    cfg = tiny(schedule="big,small", data={"val_fraction": 0.5, "domains": [
        {"name": "big", "source": "txt", "path": str(big)}, {"name": "small", "source": "txt", "path": str(small)}]})
    monkeypatch.setattr(D, "MAX_REREAD", 20)
    rows, why = D.domain_data([Run("r", cfg, {})])
    assert [r.domain for r in rows] == ["small"] and rows[0].train_docs + rows[0].val_docs == 1
    assert why == "not shown: big (0 MiB, too large to re-read for a report)"


def test_probe_panel_has_units_phase_ends_and_seed_bands() -> None:
    from matplotlib.collections import PolyCollection

    from sparsecl.report import figures as F
    from sparsecl.report.probes import Band

    nan = float("nan")
    fig = F.probe_panel("dormant", {"frac_tau0": {"a": Band([6, 12], [0.1, 0.2], [0.05, 0.1], [0.15, 0.3], 3),
                                                  "b": Band([6, 12], [0.1, 0.1], [nan, nan], [nan, nan], 1)}}, [6, 12])
    ax = fig.axes[0]
    assert ax.get_ylabel() == "fraction of MLP units"
    assert sorted(line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":") == [6, 12]
    assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 1  # a band for n = 3, none for n = 1
    assert "bad direction: higher: more dormant units" in fig._suptitle.get_text()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a (n=3)", "b (n=1)"]


def test_bars_mark_single_seed_arms_instead_of_a_zero_interval() -> None:
    from sparsecl.report import figures as F
    from sparsecl.stats.analysis import Run, groups

    def r(arm: str, seed: int, f: float) -> Run:
        return Run(f"{arm}{seed}", {"group": arm, "seed": seed}, {"group": arm, "avg_forgetting": f,
                                                                   "final_avg_loss": 1.0 + f})

    fig = F.comparison_bars(groups([r("one", 0, 0.3), r("two", 0, 0.2), r("two", 1, 0.4)]), "t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["n = 1", "n = 2"]
    segs = [seg for c in ax.collections for seg in c.get_segments()]  # error-bar segments, one per bar
    drawn = [s for s in segs if len(s) and np.isfinite(s).all()]
    assert len(drawn) == 1 and drawn[0][0][0] == 1  # one seed: no bar at all; two seeds (bar 1): the t interval
    # mean .3, sd .1414 = .1 sqrt 2 over 2 seeds: half-width t_{.975,1} sd / sqrt 2 = 12.7062 * 0.1
    assert abs(drawn[0][1][1] - drawn[0][0][1]) == pytest.approx(2 * 12.7062 * 0.1, rel=1e-4)
