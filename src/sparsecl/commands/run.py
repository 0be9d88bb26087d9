"""`sparsecl run`: train one run or every arm of an experiment."""

from __future__ import annotations

import argparse
from pathlib import Path

from sparsecl.commands import lazy_epilog
from sparsecl.config import arm_configs, load_experiment, preset_names
from sparsecl.config.docs import keys_help
from sparsecl.errors import UserError

EPILOG_HEAD = """\
examples:
  sparsecl run --preset quickstart --out runs/quickstart
  sparsecl run my.yaml sparse.density=0.05 train.lr=3e-4 --out runs/x
  sparsecl run --preset quickstart schedule=arith,facts,code train.steps_per_phase=100 --out runs/y

config keys (dotted; any of them can be overridden with key=value, values parsed as YAML; [type = default]):
"""

EPILOG_TAIL = """\
Short forms: schedule: arith,code,facts (one phase per domain) or a list of {domain: .., steps: .., objective:
lm|sft|rl} / {domains: [a, b], steps: ..}; data.domains: built-in names (`sparsecl domains` lists them; the
built-in tasks for sft and rl phases are arith_qa, dyck_qa, cipher_qa, facts_qa); data.tokenizer: byte | bpe;
probes: names, 'all' or [] (`sparsecl probe --help`); topologies: `sparsecl topology --help`.
An 'arms' list ({name, overrides}) in a config or preset trains several variants and prints one table.
Names (name, arms[].name) are folder names: letters, digits and ._+=-, no '/' or '..'. Numbers may be written
as 3e-4; NaN and infinities are errors, and so is a key repeated in a YAML mapping.
Outputs: OUT/<arm>/{config.yaml,summary.json,topology.json,ckpt/} and OUT/index.sqlite (every evaluation row).

Under torchrun (`torchrun --nproc-per-node N -m sparsecl run ...`) one run trains on N ranks: DDP, or FSDP2
with train.parallel=fsdp; train.batch_size stays the global batch; rank 0 writes (README, Scale out).

Everything is checked before the first write (fields, names, --out, device, trackers, vocabulary, data), so
exit code 2 leaves OUT as it was. Exit 1 if a run fails; a run whose loss stops being finite stops with
"diverged at step N of phase P", status 'diverged' in the index and its last good checkpoint kept.
A finished run in OUT is reused when the config differs at most in threads or log.*. SIGTERM or Ctrl-C
marks the run 'interrupted'; continue it with `sparsecl resume OUT`.
"""


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="train one run or every arm of an experiment",
                       description="Train the runs a config describes, evaluate every domain throughout, and "
                       "print the loss matrices and a comparison table.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    lazy_epilog(r, lambda: f"{EPILOG_HEAD}{keys_help()}\n\n{EPILOG_TAIL}")
    r.add_argument("config", nargs="?", help="YAML config file (optional with --preset)")
    r.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sparse.density=0.1")
    r.add_argument("--preset", help=f"start from a named preset: {', '.join(preset_names())}")
    r.add_argument("--out", required=True, help="output folder (one subfolder per arm)")
    r.add_argument("--no-progress", action="store_true", help="hide progress bars")
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sparsecl.metrics.table import report_text  # lazy: keeps --help numpy-free
    from sparsecl.train.parallel import is_main  # lazy: keeps --help torch-free
    from sparsecl.train.runner import run_experiment  # lazy: keeps --help torch-free

    config = args.config
    overrides = list(args.overrides)
    if config and not config.endswith((".yaml", ".yml")) and not Path(config).is_file():
        overrides.insert(0, config)
        config = None
    if not config and not args.preset:
        raise UserError("nothing to run: give a CONFIG.yaml or --preset NAME (see `sparsecl run --help`)")
    data, arms = load_experiment(config, overrides, args.preset)
    if "grid" in data:
        raise UserError("this config has a 'grid' (a sweep); run it with `sparsecl sweep` instead of `sparsecl run`")
    cfgs = arm_configs(data, arms)
    summaries = run_experiment(cfgs, Path(args.out), progress_bar=not args.no_progress)
    if not is_main():  # under torchrun rank 0 reports
        return 0
    print(report_text(summaries))
    print(f"\nresults: {args.out}/<arm>/summary.json; every evaluation: {args.out}/index.sqlite")
    return 0
