"""`sparsecl resume`: continue killed runs from their last checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from sparsecl.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("resume", help="continue killed runs from their last checkpoint",
                       description="Continue every unfinished run in RUN_DIR (a run folder, or the --out folder "
                       "of `sparsecl run`) from its last checkpoint; finished runs are left as they are. "
                       "The resumed result equals an uninterrupted run's.")
    s.add_argument("run_dir", help="run folder or output folder")
    s.add_argument("--no-progress", action="store_true", help="hide progress bars")
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sparsecl.metrics.table import report_text  # lazy: keeps --help numpy-free
    from sparsecl.train.parallel import is_main  # lazy: keeps --help torch-free
    from sparsecl.train.runner import resume  # lazy: keeps --help torch-free

    path = Path(args.run_dir)
    if not path.exists():
        raise UserError(f"'{path}' does not exist; pass the folder of a run started with `sparsecl run`")
    summaries = resume(path, progress_bar=not args.no_progress)
    if is_main():  # under torchrun rank 0 reports
        print(report_text(summaries))
    return 0
