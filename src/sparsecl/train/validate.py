"""Checks of the names a config takes from registries, and what only loading a file can settle.

``sparsecl.config`` checks every field it can on its own and imports nothing above it; the method, probe and
topology registries, the built-in tasks and a supplied tokenizer file live in higher layers, so their checks
live here. ``preflight`` runs them before any write; commands that only read (``topology``, ``domains``) call
``checked_configs`` directly. Errors are the ``ConfigError`` lines the config layer would raise.
"""

from __future__ import annotations

from typing import Any

from sparsecl.config import Arm, RunConfig, arm_configs, build_config
from sparsecl.data.tasks import is_task
from sparsecl.data.tokenizer import tokenizer_vocab_size
from sparsecl.errors import ConfigError
from sparsecl.methods import METHODS, method_for
from sparsecl.probes import resolve_probe_names
from sparsecl.sparse.matching import check_min_degree_feasible
from sparsecl.sparse.topology import TOPOLOGIES
from sparsecl.train.throughput import check_compile


def check_config(cfg: RunConfig) -> RunConfig:
    """Raise the first registry problem of ``cfg``; settle a supplied tokenizer file's vocabulary. Idempotent."""
    if cfg.sparse.topology not in TOPOLOGIES:
        raise ConfigError("sparse.topology", f"unknown topology '{cfg.sparse.topology}'",
                          f"choose from {sorted(TOPOLOGIES)}")
    if cfg.method.name not in METHODS:
        raise ConfigError("method.name", f"unknown method '{cfg.method.name}'", f"choose from {sorted(METHODS)}")
    tasks = {d.name for d in cfg.data.domains if is_task(d)}
    for i, p in enumerate(cfg.schedule):
        plain = [d for d in p.domains if d not in tasks]
        if p.objective != "lm" and plain:
            need = "a verifiable reward" if p.objective == "rl" else "prompt/response pairs"
            raise ConfigError(f"schedule[{i}].objective", f"{p.objective} needs {need}, but domain '{plain[0]}' has "
                              "none", "use a built-in task (arith_qa, dyck_qa, cipher_qa, facts_qa) or a jsonl domain "
                              "with prompt_field and response_field")
    if cfg.model.vocab_size == 0:  # only a supplied tokenizer file leaves it open (see TokenizerConfig.model_vocab)
        cfg.model.vocab_size = tokenizer_vocab_size(cfg.data.tokenizer)
    check_min_degree_feasible(cfg.model, cfg.sparse)  # the masks' shapes are known now: fail before any write
    resolve_probe_names(cfg.probes)  # raises ConfigError naming the valid probes
    check_compile(cfg)
    method = method_for(cfg)  # parses the params into the method's typed Params and runs its whole-config checks
    rl = [i for i, p in enumerate(cfg.schedule) if p.objective == "rl"]
    if rl and method.rl_refused:
        raise ConfigError(f"schedule[{rl[0]}].objective", f"method {cfg.method.name} cannot run an rl phase: "
                          f"{method.rl_refused}, and a GRPO step builds none",
                          "train this phase with objective sft, or pick a method that runs in rl phases "
                          "(README, Training stages)")
    return cfg


def checked_config(data: dict[str, Any]) -> RunConfig:
    """``build_config`` plus the registry checks: a RunConfig a run can start from."""
    return check_config(build_config(data))


def checked_configs(data: dict[str, Any], arms: list[Arm]) -> list[RunConfig]:
    """``arm_configs`` plus the registry checks of every arm."""
    return [check_config(c) for c in arm_configs(data, arms)]
