"""`sparsecl report`: statistics, figures and an offline HTML page for a run, a `run` output or a sweep."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("report", help="write an HTML report with figures and statistics",
                       description="Read the runs in DIR (one run folder, the --out folder of `sparsecl run`, or "
                       "of `sparsecl sweep`) and write DIR/report/index.html (self-contained, opens offline), "
                       "DIR/report/figures/*.png|pdf, and DIR/report/results.csv|parquet (one row per run x "
                       "evaluation x domain). Statistics: means with 95% t CIs over seeds (bootstrap CIs from 5 "
                       "seeds on), paired t and Wilcoxon tests by seed with Holm correction, the crossover phase "
                       "with a bootstrap CI, and verdicts for H1-H3 (no test below 3 paired seeds; each hypothesis "
                       "opens with the threats to validity of the runs at hand).")
    r.add_argument("dir", help="run folder, run output folder or sweep folder")
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sparsecl.report import build_report  # lazy: keeps --help torch-free

    path = build_report(Path(args.dir))
    print(f"report: {path}")
    print(f"figures: {path.parent / 'figures'}; data: {path.parent / 'results.csv'}, "
          f"{path.parent / 'results.parquet'}")
    return 0
