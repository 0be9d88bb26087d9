"""`sparsecl probe`: compute training-progression diagnostics on a run's saved phase checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from sparsecl.commands import lazy_epilog
from sparsecl.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("probe", help="compute diagnostics on a run's saved phase checkpoints",
                       description="Run probes (DESIGN.md section 8) on every ckpt/phase-NNN checkpoint of RUN_DIR, "
                       "print a table of the headline numbers and write RUN_DIR/probes.json.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    lazy_epilog(s, _probe_list)
    s.add_argument("run_dir", help="a run folder (one subfolder of `sparsecl run --out`)")
    s.add_argument("--probes", help="comma-separated probe names or 'all' (default: the run's config 'probes')")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to compute (default cpu)")
    s.set_defaults(func=run)


def _probe_list() -> str:
    from sparsecl.probes import PROBES  # lazy: the probe registry loads torch; only `probe --help` shows it

    return "probes:\n" + "\n".join(f"  {p.name:18s} {p.description} [{p.cost}]" for p in PROBES.values())


def run(args: argparse.Namespace) -> int:
    from sparsecl.probes.posthoc import headline_table, probe_run  # lazy: keeps --help torch-free

    path = Path(args.run_dir)
    if not path.exists():
        raise UserError(f"'{path}' does not exist; pass the folder of a run started with `sparsecl run`")
    names = [n.strip() for n in args.probes.split(",") if n.strip()] if args.probes else None
    if args.device == "cuda":
        import torch  # lazy: keeps --help torch-free

        if not torch.cuda.is_available():
            raise UserError("--device cuda but no CUDA device is visible; use --device cpu")
    res = probe_run(path, names, args.device)
    print(headline_table(res["probes"]))
    print(f"\nall values: {path / 'probes.json'}")
    return 0
