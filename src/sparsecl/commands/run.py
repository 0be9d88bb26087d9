"""`sparsecl run`: train one run or every arm of an experiment."""

from __future__ import annotations

import argparse
from pathlib import Path

from sparsecl.errors import UserError

EPILOG = """\
examples:
  sparsecl run --preset quickstart --out runs/quickstart
  sparsecl run my.yaml sparse.density=0.05 train.lr=3e-4 --out runs/x
  sparsecl run --preset quickstart schedule=arith,facts,code train.steps_per_phase=100 --out runs/y

config keys (dotted; any of them can be overridden with key=value, values parsed as YAML):
  seed, device, threads, dtype, checkpoint_every, checkpoint_resume_state,
  model.{n_layer,n_head,d_model,d_ff,block_size,vocab_size,dropout,bias,attn_backend},
  sparse.{density,topology,allocation,backend,targets,matching,min_degree,brf_r,brf_degree,expander_degree,
         nm_n,nm_m,block}
    (topologies and the report: `sparsecl topology --help`),
  data.domains (built-in names, or {name, source: txt|dir|jsonl|hf, path, text_field, max_bytes,
    separator: {prefix|regex} (txt), config_name, split, revision, streaming (hf), prompt_field and
    response_field (jsonl prompt/response pairs)}; relative paths resolve against the config file's folder;
    `sparsecl domains --help`; built-in tasks: arith_qa, dyck_qa, cipher_qa, facts_qa), data.val_fraction,
    data.split_salt,
  data.tokenizer (byte | bpe | {kind: bpe, vocab_size, train_bytes} | {kind: file, path}; model.vocab_size
    follows it), data.cache_dir (token caches; default $SPARSECL_CACHE_DIR, else ~/.cache/sparsecl),
  schedule (e.g. arith,code,facts, or a list of {domain: .., steps: .., objective: lm|sft|rl} /
    {domains: [a, b], steps: ..}; sft and rl need task domains),
  rl.{group_size,temperature,clip,beta,completion_length,prompts} (GRPO in rl phases),
  train.{steps_per_phase,batch_size,lr,min_lr,lr_schedule,warmup_steps,weight_decay,grad_clip,reset_optimizer,
         grad_accum,parallel (ddp|fsdp),activation_checkpointing,compile},
  eval.{every,tokens,batch_size,task_prompts}, method.name, method.params,
  probes (names, 'all' or []; see `sparsecl probe --help`), probe_every,
  probe.{batch_size,curvature_batch,lanczos_steps,hutchinson_samples,lmc_points,subspace_k,dormant_taus,
         plasticity_steps,plasticity_lr,plasticity_batch,noise_batch,fisher_labels}
  log.{tensorboard,wandb,mlflow,dir,project} (optional trackers, off by default)
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
    from sparsecl.config import preset_names

    r = sub.add_parser("run", help="train one run or every arm of an experiment",
                       description="Train the runs a config describes, evaluate every domain throughout, and "
                       "print the loss matrices and a comparison table.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("config", nargs="?", help="YAML config file (optional with --preset)")
    r.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sparse.density=0.1")
    r.add_argument("--preset", help=f"start from a named preset: {', '.join(preset_names())}")
    r.add_argument("--out", required=True, help="output folder (one subfolder per arm)")
    r.add_argument("--no-progress", action="store_true", help="hide progress bars")
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sparsecl.config import arm_configs, load_experiment
    from sparsecl.metrics.table import report_text
    from sparsecl.train.parallel import is_main
    from sparsecl.train.runner import run_experiment

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
