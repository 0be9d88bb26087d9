"""Config sections: the model, its masks, the data, the schedule, optimisation, evaluation, the method.

Small dataclasses, one docstring per field, range checks in ``__post_init__`` that raise ``ConfigError``
naming the dotted field and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from sparsecl.errors import ConfigError


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
    tokens: int | None = None
    """Target tokens scored per domain (default 16384): ceil(tokens / block_size) windows, a fixed sample
    spread over the whole validation stream, seeded by (seed, domain); fewer if the stream is shorter."""
    batch_size: int = 16
    """Sequences per evaluation forward pass (memory only: the scored windows do not depend on it)."""
    batches: int | None = None
    """Older spelling of the sample size: tokens = batches x batch_size x block_size. Set tokens instead."""

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ConfigError("eval.every", "must be >= 0")
        if self.batch_size < 1:
            raise ConfigError("eval.batch_size", f"must be >= 1, got {self.batch_size}")
        if self.tokens is not None and self.tokens < 1:
            raise ConfigError("eval.tokens", f"must be >= 1, got {self.tokens}", "e.g. eval.tokens=16384")
        if self.batches is not None:
            if self.batches < 1:
                raise ConfigError("eval.batches", f"must be >= 1, got {self.batches}", "set eval.tokens instead")
            if self.tokens is not None:
                raise ConfigError("eval.batches", "is set together with eval.tokens",
                                  "drop eval.batches: eval.tokens replaces it")

    def resolve(self, block_size: int) -> None:
        """Settle the sample size in tokens (the saved config then holds tokens only)."""
        if self.batches is not None:
            self.tokens, self.batches = self.batches * self.batch_size * block_size, None
        elif self.tokens is None:
            self.tokens = DEFAULT_EVAL_TOKENS


DEFAULT_EVAL_TOKENS = 16384
"""Scored tokens per domain by default: 128 windows of 128 at quickstart size."""


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
