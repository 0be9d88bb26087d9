"""The whole run config, made of the sections, and an experiment arm."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from sparsecl.config.diagnostics import DEFAULT_PROBES, LogConfig, ProbeConfig
from sparsecl.config.sections import (
    DataConfig,
    DomainSpec,
    EvalConfig,
    MethodConfig,
    ModelConfig,
    PhaseSpec,
    RLConfig,
    SparseConfig,
    TrainConfig,
)
from sparsecl.errors import ConfigError


@dataclass
class RunConfig:
    name: str = "run"
    """Run name; also the run directory's name."""
    group: str = ""
    """Arm this run belongs to; runs of one group differ only in their seed (empty = the name)."""
    seed: int = 0
    """One seed for data order, init, masks and probes."""
    device: Literal["cpu", "cuda", "auto"] = "auto"
    """'auto' uses CUDA when present."""
    threads: int = 2
    """CPU threads for this run (torch.set_num_threads)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Autocast dtype of training forward passes ('bfloat16' for GPUs); evaluation always runs in float32."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The GPT."""
    sparse: SparseConfig = field(default_factory=SparseConfig)
    """The connection masks."""
    data: DataConfig = field(default_factory=DataConfig)
    """The domains."""
    schedule: list[PhaseSpec] = field(default_factory=list)
    """Phases in order; a string 'a,b,c' means one phase per domain."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""
    method: MethodConfig = field(default_factory=MethodConfig)
    """Continual-learning method."""
    rl: RLConfig = field(default_factory=RLConfig)
    """GRPO settings of phases with objective rl."""
    checkpoint_every: int = 0
    """Also checkpoint every this many steps inside a phase (0 = phase ends only)."""
    checkpoint_resume_state: Literal["every", "latest"] = "every"
    """Where optimizer and method state is kept: in every checkpoint, or only in the newest ('latest': older
    phase checkpoints keep the model alone, which probes need, and in-phase step checkpoints are dropped once
    superseded; about 3x less disk for AdamW runs, but post-hoc update_ratio only for the last phase)."""
    probes: list[str] = field(default_factory=lambda: list(DEFAULT_PROBES))
    """Diagnostics measured at every phase end: probe names, ["all"], or [] for none (see `sparsecl probe`)."""
    probe_every: int = 0
    """Also run the probes every this many steps inside a phase (0 = phase ends only)."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """Knobs of the probes."""
    log: LogConfig = field(default_factory=LogConfig)
    """Optional experiment trackers (all off by default)."""

    def __post_init__(self) -> None:
        from sparsecl.store.paths import check_name

        check_name(self.name, "name")
        if self.group:
            check_name(self.group, "group")
        if self.threads < 1:
            raise ConfigError("threads", "must be >= 1")
        if not self.schedule:
            raise ConfigError("schedule", "is empty", "list phases, e.g. schedule: arith,code,facts")
        if not self.data.domains:
            names: list[str] = []
            for p in self.schedule:
                names += [d for d in p.domains if d not in names]
            self.data.domains = [DomainSpec(name=n) for n in names]
        known = {d.name for d in self.data.domains}
        for i, p in enumerate(self.schedule):
            for d in p.domains:
                if d not in known:
                    raise ConfigError(f"schedule[{i}]", f"domain '{d}' is not in data.domains",
                                      f"use one of {sorted(known)} or add it to data.domains")
            if p.steps == 0:
                p.steps = self.train.steps_per_phase
            if p.objective != "lm":
                tasks = {d.name for d in self.data.domains if d.is_task}
                plain = [d for d in p.domains if d not in tasks]
                if plain:
                    need = "a verifiable reward" if p.objective == "rl" else "prompt/response pairs"
                    raise ConfigError(f"schedule[{i}].objective", f"{p.objective} needs {need}, but domain "
                                      f"'{plain[0]}' has none",
                                      "use a built-in task (arith_qa, dyck_qa, cipher_qa, facts_qa) or a jsonl "
                                      "domain with prompt_field and response_field")
        from sparsecl.data.tokenizer import tokenizer_vocab_size

        if self.model.vocab_size == 0:
            self.model.vocab_size = tokenizer_vocab_size(self.data.tokenizer)
        elif self.data.tokenizer.kind != "file":  # a supplied file is checked where it is loaded (the runner), so
            vocab = tokenizer_vocab_size(self.data.tokenizer)  # a run folder's copy suffices after the original moves
            if self.model.vocab_size < vocab:
                raise ConfigError("model.vocab_size", f"{self.model.vocab_size} is smaller than the tokenizer's "
                                  f"vocabulary ({vocab})", "remove model.vocab_size (it follows the tokenizer) or "
                                  "raise it")
        self.eval.resolve(self.model.block_size)
        if self.checkpoint_every < 0:
            raise ConfigError("checkpoint_every", "must be >= 0")
        if self.probe_every < 0:
            raise ConfigError("probe_every", "must be >= 0")
        from sparsecl.sparse.matching import check_min_degree_feasible

        check_min_degree_feasible(self.model, self.sparse)  # the masks' shapes are known now: fail before any write
        from sparsecl.probes import resolve_probe_names

        resolve_probe_names(self.probes)  # raises ConfigError naming the valid probes
        from sparsecl.methods import METHODS

        method = METHODS[self.method.name]
        method.validate_run(self)
        rl = [i for i, p in enumerate(self.schedule) if p.objective == "rl"]
        if rl and method.rl_refused:
            raise ConfigError(f"schedule[{rl[0]}].objective", f"method {method.name} cannot run an rl phase: "
                              f"{method.rl_refused}, and a GRPO step builds none",
                              "train this phase with objective sft, or pick a method that runs in rl phases "
                              "(README, Training stages)")

    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.data.domains]


@dataclass
class Arm:
    """One arm of an experiment: a name and the overrides that turn the base config into it."""

    name: str
    overrides: dict[str, Any]

