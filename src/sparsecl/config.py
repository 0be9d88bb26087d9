"""Typed, validated run configuration.

Small dataclasses, one docstring per field, range checks in ``__post_init__``. ``load_config`` turns a
YAML mapping plus ``key=value`` overrides into a ``RunConfig``; every problem raises ``ConfigError`` naming
the dotted field and the fix, before anything is written to disk.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from sparsecl.errors import ConfigError, UserError


@dataclass
class ModelConfig:
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads per block; must divide d_model."""
    d_model: int = 128
    """Residual stream width."""
    d_ff: int = 0
    """MLP hidden width; 0 means 4 * d_model."""
    block_size: int = 128
    """Context length in tokens."""
    vocab_size: int = 256
    """Vocabulary size; the byte tokenizer needs 256."""
    dropout: float = 0.0
    """Dropout probability on attention and residual outputs."""
    bias: bool = False
    """Biases in linear layers and LayerNorms."""
    attn_backend: Literal["sdpa", "math"] = "sdpa"
    """'sdpa' lets PyTorch pick the fastest kernel; 'math' forces the reference kernel (double backward)."""

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "d_model", "block_size", "vocab_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ConfigError("model.n_head", f"{self.n_head} does not divide d_model={self.d_model}",
                              "pick n_head so that d_model / n_head is a whole number")
        if self.d_ff < 0:
            raise ConfigError("model.d_ff", f"must be >= 0, got {self.d_ff}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("model.dropout", f"must be in [0, 1), got {self.dropout}")

    @property
    def hidden(self) -> int:
        return self.d_ff or 4 * self.d_model


@dataclass
class SparseConfig:
    density: float = 1.0
    """Fraction of connections kept in every masked linear layer (rho); 1.0 means dense."""
    topology: str = "er"
    """How each layer's mask is drawn (see `sparsecl topology --help`)."""
    allocation: Literal["uniform", "erk"] = "uniform"
    """How the global density is split over layers."""
    backend: Literal["masked", "csr", "auto"] = "masked"
    """'masked' multiplies a dense weight by its mask; 'csr' stores only the kept values."""
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v", "o", "up", "down"])
    """Which linear layers of each block carry a mask."""
    brf_r: float = 0.25
    """BRF randomness r in [0, 1]: 0 is a band, 1 is uniform random."""
    brf_degree: Literal["fixed", "random"] = "fixed"
    """BRF degree distribution."""
    nm_n: int = 2
    """N of an N:M pattern (N kept out of every M consecutive inputs)."""
    nm_m: int = 4
    """M of an N:M pattern."""
    block: int = 16
    """Block size b of the block topology."""
    matching: Literal["shape", "params"] = "shape"
    """'shape' keeps dense widths; 'params' widens the sparse model to the dense nonzero count."""

    def __post_init__(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise ConfigError("sparse.density", f"must be in (0, 1], got {self.density}",
                              "use a fraction such as 0.1 for 10%")
        allowed = {"q", "k", "v", "o", "up", "down"}
        bad = [t for t in self.targets if t not in allowed]
        if bad:
            raise ConfigError("sparse.targets", f"unknown layer(s) {bad}", f"choose from {sorted(allowed)}")
        if not 0.0 <= self.brf_r <= 1.0:
            raise ConfigError("sparse.brf_r", f"must be in [0, 1], got {self.brf_r}")
        if not 0 < self.nm_n <= self.nm_m:
            raise ConfigError("sparse.nm_n", f"need 0 < nm_n <= nm_m, got {self.nm_n}:{self.nm_m}")
        if self.block < 1:
            raise ConfigError("sparse.block", f"must be >= 1, got {self.block}")
        from sparsecl.sparse.topology import TOPOLOGIES

        if self.topology not in TOPOLOGIES:
            raise ConfigError("sparse.topology", f"unknown topology '{self.topology}'",
                              f"choose from {sorted(TOPOLOGIES)}")
        if self.topology == "nm" and not self.is_dense:
            if abs(self.density - self.nm_n / self.nm_m) > 1e-9:
                raise ConfigError("sparse.density", f"topology nm keeps nm_n/nm_m = {self.nm_n / self.nm_m:g} of "
                                  f"every layer, but density is {self.density:g}",
                                  f"set sparse.density={self.nm_n / self.nm_m:g} or change nm_n/nm_m")
            if self.allocation != "uniform":
                raise ConfigError("sparse.allocation", "topology nm fixes every layer's density at nm_n/nm_m",
                                  "use allocation=uniform with nm")

    @property
    def is_dense(self) -> bool:
        return self.density >= 1.0


@dataclass
class DomainSpec:
    name: str = ""
    """Domain name used in schedules and tables."""
    source: Literal["builtin", "txt", "dir", "jsonl"] = "builtin"
    """'builtin', a .txt file (documents split by blank lines), a folder of text files, or .jsonl."""
    path: str = ""
    """File or folder for non-builtin sources."""
    text_field: str = "text"
    """Field holding the text in each .jsonl record."""
    max_bytes: int = 0
    """Cap on the domain's total text in bytes (0 = the source's default)."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("data.domains", "a domain has no name", "give every domain a 'name'")
        if self.source != "builtin" and not self.path:
            raise ConfigError(f"data.domains.{self.name}.path", f"source '{self.source}' needs a path",
                              "set path to the file or folder")
        if self.max_bytes < 0:
            raise ConfigError(f"data.domains.{self.name}.max_bytes", "must be >= 0")


@dataclass
class DataConfig:
    domains: list[DomainSpec] = field(default_factory=list)
    """Domains to train on and evaluate; a plain string names a built-in domain."""
    val_fraction: float = 0.1
    """Fraction of documents (by hash) held out for validation."""
    split_salt: str = "sparsecl"
    """Salt of the document hash that assigns train/val; change it to draw another split."""

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError("data.val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        names = [d.name for d in self.domains]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError("data.domains", f"duplicate domain name(s) {dup}", "give each domain one name")


@dataclass
class PhaseSpec:
    domains: list[str] = field(default_factory=list)
    """Domains sampled in this phase (uniform mixture when more than one)."""
    steps: int = 0
    """Optimizer steps in this phase; 0 means train.steps_per_phase."""

    def __post_init__(self) -> None:
        if not self.domains:
            raise ConfigError("schedule", "a phase names no domain", "write e.g. {domain: code, steps: 200}")
        if self.steps < 0:
            raise ConfigError("schedule.steps", f"must be >= 0, got {self.steps}")


@dataclass
class TrainConfig:
    steps_per_phase: int = 200
    """Default optimizer steps per phase."""
    batch_size: int = 16
    """Sequences per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate of each phase."""
    min_lr: float = 1e-4
    """Final learning rate of the cosine decay."""
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    """Shape after warmup, restarted in every phase."""
    warmup_steps: int = 20
    """Linear warmup steps at the start of every phase."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay on matrices and embeddings (not on norms or biases)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 = off)."""
    reset_optimizer: bool = True
    """Start every phase with fresh AdamW moments, as an independent finetuning would."""

    def __post_init__(self) -> None:
        for name in ("steps_per_phase", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError("train.lr", f"must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError("train.min_lr", f"must be in [0, lr={self.lr}], got {self.min_lr}")
        if self.warmup_steps < 0:
            raise ConfigError("train.warmup_steps", "must be >= 0")
        if self.weight_decay < 0:
            raise ConfigError("train.weight_decay", "must be >= 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"train.{name}", "must be in [0, 1)")
        if self.grad_clip < 0:
            raise ConfigError("train.grad_clip", "must be >= 0")


@dataclass
class EvalConfig:
    every: int = 50
    """Evaluate every domain every this many steps inside a phase (0 = phase ends only)."""
    batches: int = 4
    """Validation batches per domain; the same windows every time."""
    batch_size: int = 16
    """Sequences per validation batch."""

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ConfigError("eval.every", "must be >= 0")
        if self.batches < 1 or self.batch_size < 1:
            raise ConfigError("eval.batches", "eval.batches and eval.batch_size must be >= 1")


@dataclass
class MethodConfig:
    name: str = "naive"
    """Continual-learning method (see `sparsecl run --help`)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Method hyperparameters, validated by the method itself."""

    def __post_init__(self) -> None:
        from sparsecl.methods import METHODS

        if self.name not in METHODS:
            raise ConfigError("method.name", f"unknown method '{self.name}'", f"choose from {sorted(METHODS)}")
        METHODS[self.name].validate_params(self.params)


@dataclass
class ProbeConfig:
    """Knobs of the training-progression probes (``sparsecl.probes``); DESIGN.md section 8."""

    batch_size: int = 8
    """Validation windows per domain in the fixed probe batch (raised so effective rank sees >= 4*d_model tokens)."""
    curvature_batch: int = 8
    """Sequences of the current phase's domains in the fixed curvature batch (Lanczos, Hutchinson)."""
    lanczos_steps: int = 40
    """Hessian-vector products in Lanczos (30-60 recommended; full reorthogonalisation)."""
    hutchinson_samples: int = 32
    """Rademacher probes for the Hessian trace, fixed (32-64 recommended; never stopped early)."""
    lmc_points: int = 11
    """Points of the interpolation grid alpha = linspace(0, 1, n), endpoints included."""
    subspace_k: int = 8
    """Top-k left singular vectors compared by the subspace-rotation probe (capped by the matrix rank)."""
    dormant_taus: list[float] = field(default_factory=lambda: [0.0, 0.025, 0.1])
    """ReDo thresholds: a unit is dormant if its normalised mean |activation| is <= tau."""
    plasticity_steps: int = 20
    """K: AdamW steps on the fixed fresh task in the plasticity probe."""
    plasticity_lr: float = 3e-3
    """Constant learning rate of the plasticity probe."""
    plasticity_batch: int = 8
    """Sequences per step of the plasticity probe's fresh task."""
    noise_batch: int = 16
    """Sequences with one gradient each, for the gradient noise scale and the Fisher diagonal."""
    fisher_labels: Literal["empirical", "model"] = "empirical"
    """Fisher from the data's labels ('empirical') or from labels sampled from the model ('model', true Fisher)."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "curvature_batch", "subspace_k", "plasticity_steps", "plasticity_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"probe.{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.lanczos_steps < 2:
            raise ConfigError("probe.lanczos_steps", f"must be >= 2, got {self.lanczos_steps}", "use 30-60")
        if self.hutchinson_samples < 16:
            raise ConfigError("probe.hutchinson_samples", f"must be >= 16, got {self.hutchinson_samples}",
                              "use 32-64: a handful of probes gives a useless standard error")
        if self.lmc_points < 3:
            raise ConfigError("probe.lmc_points", f"must be >= 3, got {self.lmc_points}", "use e.g. 11")
        if self.noise_batch < 2:
            raise ConfigError("probe.noise_batch", f"must be >= 2, got {self.noise_batch}",
                              "a covariance needs at least two per-sequence gradients")
        if not self.dormant_taus or any(not 0.0 <= t < 1.0 for t in self.dormant_taus):
            raise ConfigError("probe.dormant_taus", f"must be a non-empty list in [0, 1), got {self.dormant_taus}")
        if self.plasticity_lr <= 0:
            raise ConfigError("probe.plasticity_lr", f"must be > 0, got {self.plasticity_lr}")


DEFAULT_PROBES = ["residual_norm", "repr_drift", "param_drift", "update_ratio", "subspace_rotation", "lmc",
                  "effective_rank", "dormant", "weight_grad_norm", "interference", "noise_scale", "fisher",
                  "plasticity"]
# Left out of the default for cost (see benchmarks/probe_cost.py): hessian_eigs (~26% of a quickstart phase at
# 40 Lanczos steps) and hessian_trace (11-23% at 32 samples). The default set measured 10-14% of a phase.


@dataclass
class LogConfig:
    tensorboard: bool = False
    """Write eval losses, loss matrices and probes to TensorBoard (needs `pip install tensorboard`)."""
    wandb: bool = False
    """Log the same to Weights & Biases (needs wandb; set WANDB_MODE=offline to stay offline)."""
    mlflow: bool = False
    """Log the same to MLflow (needs mlflow; the tracking URI comes from MLFLOW_TRACKING_URI, default ./mlruns)."""
    dir: str = ""
    """TensorBoard log folder; empty = <run dir>/tensorboard."""
    project: str = "sparsecl"
    """W&B project / MLflow experiment name."""


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
    checkpoint_every: int = 0
    """Also checkpoint every this many steps inside a phase (0 = phase ends only)."""
    probes: list[str] = field(default_factory=lambda: list(DEFAULT_PROBES))
    """Diagnostics measured at every phase end: probe names, ["all"], or [] for none (see `sparsecl probe`)."""
    probe_every: int = 0
    """Also run the probes every this many steps inside a phase (0 = phase ends only)."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """Knobs of the probes."""
    log: LogConfig = field(default_factory=LogConfig)
    """Optional experiment trackers (all off by default)."""

    def __post_init__(self) -> None:
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
        if self.checkpoint_every < 0:
            raise ConfigError("checkpoint_every", "must be >= 0")
        if self.probe_every < 0:
            raise ConfigError("probe_every", "must be >= 0")
        from sparsecl.probes import resolve_probe_names

        resolve_probe_names(self.probes)  # raises ConfigError naming the valid probes
        from sparsecl.methods import METHODS

        METHODS[self.method.name].validate_run(self)

    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.data.domains]


@dataclass
class Arm:
    """One arm of an experiment: a name and the overrides that turn the base config into it."""

    name: str
    overrides: dict[str, Any]


# ----------------------------------------------------------------------------------------------------
# building dataclasses from plain data, with errors that name the field


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(path, f"must be one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return _coerce(value, a, path)
            except ConfigError:
                continue
        raise ConfigError(path, f"expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(path, f"expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    raise ConfigError(path, f"unsupported type {tp}")


def _normalise(cls: type, data: dict[str, Any], path: str) -> dict[str, Any]:
    """Accept the short forms a person would write."""
    data = dict(data)
    if cls is RunConfig:
        sched = data.get("schedule")
        if isinstance(sched, str):
            data["schedule"] = [{"domains": [d.strip()]} for d in sched.split(",") if d.strip()]
        elif isinstance(sched, list):
            data["schedule"] = [
                {"domains": [p]} if isinstance(p, str)
                else ({**{k: v for k, v in p.items() if k != "domain"}, "domains": [p["domain"]]}
                      if isinstance(p, dict) and "domain" in p else p)
                for p in sched
            ]
    if cls is RunConfig and isinstance(data.get("probes"), str):
        data["probes"] = [n.strip() for n in data["probes"].split(",") if n.strip()]
    if cls is DataConfig and isinstance(data.get("domains"), list):
        data["domains"] = [{"name": d} if isinstance(d, str) else d for d in data["domains"]]
    if cls is DataConfig and isinstance(data.get("domains"), str):
        data["domains"] = [{"name": d.strip()} for d in data["domains"].split(",") if d.strip()]
    if cls is PhaseSpec and isinstance(data.get("domains"), str):
        data["domains"] = [d.strip() for d in data["domains"].split(",") if d.strip()]
    return data


def _build(cls: type, data: dict[str, Any], path: str) -> Any:
    data = _normalise(cls, data, path)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else key
        if key not in names:
            raise ConfigError(sub, "unknown key", f"valid keys here are {sorted(names)}")
        kwargs[key] = _coerce(value, hints[key], sub)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(path or cls.__name__, str(e)) from e


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(key, f"'{p}' is not a mapping, so '{key}' cannot be set")
        cur = nxt
    cur[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise UserError(f"override '{text}' is not key=value; write e.g. sparse.density=0.1")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"override '{text}' has no key; write e.g. sparse.density=0.1")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def preset_names() -> list[str]:
    root = resources.files("sparsecl") / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file '{path}' does not exist; pass the path of a YAML file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file '{path}' is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping at the top level")
    return data


def load_preset(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise UserError(f"unknown preset '{name}'; choose from {preset_names()}")
    text = (resources.files("sparsecl") / "presets" / f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def load_experiment(config_path: str | None, overrides: list[str], preset: str | None = None
                    ) -> tuple[dict[str, Any], list[Arm]]:
    """Merge preset, file and overrides into one raw mapping; split off the arms."""
    data: dict[str, Any] = {}
    if preset:
        data = load_preset(preset)
    if config_path:
        data = _deep_merge(data, read_yaml(config_path))
    cli = dict(parse_override(ov) for ov in overrides)
    for k, v in cli.items():
        set_dotted(data, k, v)
    seeds = data.pop("seeds", None)
    if seeds is not None and (not isinstance(seeds, list) or not seeds
                              or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)):
        raise ConfigError("seeds", f"must be a non-empty list of integers, got {seeds!r}",
                          "write e.g. seeds: [0, 1, 2]")
    if seeds is not None:
        data["_seeds"] = seeds
    raw_arms = data.pop("arms", None)
    arms: list[Arm] = []
    if raw_arms is not None:
        if not isinstance(raw_arms, list) or not raw_arms:
            raise ConfigError("arms", "must be a non-empty list of {name, overrides}")
        for i, a in enumerate(raw_arms):
            if not isinstance(a, dict) or "name" not in a:
                raise ConfigError(f"arms[{i}]", "needs a 'name' and optional 'overrides' mapping")
            extra = set(a) - {"name", "overrides"}
            if extra:
                raise ConfigError(f"arms[{i}].{sorted(extra)[0]}", "unknown key", "use name and overrides")
            ovs = a.get("overrides") or {}
            if not isinstance(ovs, dict):
                raise ConfigError(f"arms[{i}].overrides", "must be a mapping of dotted keys to values")
            per_run = {k: v for k, v in cli.items() if k.split(".")[0] not in ("seeds", "arms")}
            arms.append(Arm(str(a["name"]), {**ovs, **per_run}))  # command-line overrides win
    return data, arms


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(data: dict[str, Any]) -> RunConfig:
    return _build(RunConfig, data, "")


def arm_configs(data: dict[str, Any], arms: list[Arm]) -> list[RunConfig]:
    """Resolve every arm (or the single run), times every seed of a ``seeds`` list, to a RunConfig.

    With seeds, run names are '<arm>-s<seed>' and ``group`` is the arm's name.
    """
    data = copy.deepcopy(data)
    seeds = data.pop("_seeds", None)
    if not arms:
        arms = [Arm(str(data.get("name", "run")), {})]
    out = []
    for arm in arms:
        for seed in seeds if seeds is not None else [None]:
            d = copy.deepcopy(data)
            for k, v in arm.overrides.items():
                set_dotted(d, k, v)
            d["name"] = arm.name if seed is None else f"{arm.name}-s{seed}"
            d["group"] = arm.name
            if seed is not None:
                d["seed"] = seed
            out.append(build_config(d))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ConfigError("arms", "arm names must be unique")
    return out


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
