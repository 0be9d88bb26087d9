"""Config sections: the model, its masks, the data, the schedule, optimisation, evaluation, the method.

Small dataclasses, one docstring per field, range checks in ``__post_init__`` that raise ``ConfigError``
naming the dotted field and the fix. Names that registries own (methods, probes, topologies, built-in tasks)
are checked by ``sparsecl.train.validate``: this package imports nothing above it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
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
    vocab_size: int = 0
    """Vocabulary size; 0 = the tokenizer's (data.tokenizer); an explicit value may not be smaller."""
    dropout: float = 0.0
    """Dropout probability on attention and residual outputs."""
    bias: bool = False
    """Biases in linear layers and LayerNorms."""
    attn_backend: Literal["sdpa", "math"] = "sdpa"
    """'sdpa' lets PyTorch pick the fastest kernel; 'math' forces the reference kernel (double backward)."""

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "d_model", "block_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.vocab_size < 0:
            raise ConfigError("model.vocab_size", f"must be >= 0 (0 = the tokenizer's), got {self.vocab_size}")
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


MIN_DEGREE_TOPOLOGIES = ("er", "brf", "expander")
"""Topologies that honour sparse.min_degree (the near-biregular expander meets it whenever it is feasible)."""


@dataclass
class SparseConfig:
    density: float = 1.0
    """Fraction of connections kept in every masked linear layer (rho); 1.0 means dense."""
    topology: str = "er"
    """How each layer's mask is drawn (see `sparsecl topology --help`)."""
    allocation: Literal["uniform", "erk"] = "uniform"
    """How the global density is split over layers."""
    backend: Literal["masked", "csr", "block", "semi24", "auto"] = "masked"
    """'masked' keeps a dense weight with exact zeros off its mask; 'csr' stores only the kept values; 'block'
    multiplies b x b tiles (b = sparse.block; for topology=block); 'semi24' runs 2:4 masks on 2:4 sparse GPU
    kernels (masked elsewhere); 'auto' picks per layer by shape, density, tokens and device."""
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
    expander_degree: Literal["near", "exact"] = "near"
    """Expander degrees: 'near' hits the target link count (row/column degrees d or d+1); 'exact' is strictly
    biregular at the nearest feasible density."""
    min_degree: int = 0
    """er, brf and expander: every row and column of every mask keeps at least this many links (0 = no guarantee)."""
    matching: Literal["shape", "params", "masked_params"] = "shape"
    """'shape' keeps dense widths; 'params' widens the sparse model to the dense nonzero count;
    'masked_params' widens it until the masked layers' nonzeros equal the dense model's masked-layer count."""

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
        if self.min_degree < 0:
            raise ConfigError("sparse.min_degree", f"must be >= 0, got {self.min_degree}")
        if self.min_degree > 0 and self.topology not in MIN_DEGREE_TOPOLOGIES and not self.is_dense:
            raise ConfigError("sparse.min_degree", f"topology {self.topology} cannot guarantee a minimum degree",
                              f"use one of {list(MIN_DEGREE_TOPOLOGIES)} or set sparse.min_degree=0")
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
class Separator:
    """Where a `txt` file's documents start; both empty = documents are separated by blank lines."""

    prefix: str = ""
    """Every line starting with this text starts a new document (kept as its first line), e.g. '# file:'."""
    regex: str = ""
    """Every line matching this regular expression (re.match) starts a new document (kept as its first line)."""


@dataclass
class DomainSpec:
    name: str = ""
    """Domain name used in schedules and tables."""
    source: Literal["builtin", "txt", "dir", "jsonl", "hf"] = "builtin"
    """'builtin', a .txt file, a folder of text files (one document per file), .jsonl, or 'hf': a Hugging Face
    dataset (a hub name, a save_to_disk folder, or a local .parquet/.json/.jsonl/.csv file)."""
    path: str = ""
    """File or folder for non-builtin sources (relative to the config file's folder), or a hub dataset name."""
    text_field: str = "text"
    """Field holding the text in each .jsonl record or dataset row (a list of strings is joined by newlines)."""
    max_bytes: int = 0
    """Cap on the domain's total text in bytes (0 = the source's default: 1 MB for built-ins, all for files)."""
    separator: Separator = field(default_factory=Separator)
    """txt only: the line that starts each document ({prefix: ...} or {regex: ...}); default blank lines."""
    config_name: str = ""
    """hf only: the dataset's configuration (the `name` argument of datasets.load_dataset)."""
    split: str = "train"
    """hf only: which split of the dataset to read (local .parquet/.json/.csv files have only 'train')."""
    streaming: bool = False
    """hf only: stream rows instead of downloading the whole dataset (stops at max_bytes)."""
    revision: str = ""
    """hf only: the hub revision (commit or tag) to pin; empty = the default branch."""
    prompt_field: str = ""
    """jsonl only: with response_field, each record is a prompt/response pair (for sft and rl phases)."""
    response_field: str = ""
    """jsonl only: the field holding the answer; the exact-match reward of rl phases compares against it."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("data.domains", "a domain has no name", "give every domain a 'name'")
        where = f"data.domains.{self.name}"
        if self.source != "builtin" and not self.path:
            raise ConfigError(f"{where}.path", f"source '{self.source}' needs a path",
                              "set path to the file or folder" + (" or a hub dataset name" if self.source == "hf"
                                                                  else ""))
        if self.max_bytes < 0:
            raise ConfigError(f"{where}.max_bytes", "must be >= 0")
        sep = self.separator
        if sep.prefix or sep.regex:
            if self.source != "txt":
                raise ConfigError(f"{where}.separator", f"only applies to source txt, not '{self.source}'",
                                  "remove it, or use source: txt")
            if sep.prefix and sep.regex:
                raise ConfigError(f"{where}.separator", "give prefix or regex, not both")
            if sep.regex:
                try:
                    re.compile(sep.regex)
                except re.error as e:
                    raise ConfigError(f"{where}.separator.regex", f"is not a valid regular expression ({e})") from e
        if self.source != "hf":
            for key, unset in (("config_name", ""), ("revision", ""), ("split", "train"), ("streaming", False)):
                if getattr(self, key) != unset:
                    raise ConfigError(f"{where}.{key}", "only applies to source hf", "remove it")
        if not self.split:
            raise ConfigError(f"{where}.split", "is empty", "name a split, e.g. train")
        if bool(self.prompt_field) != bool(self.response_field):
            missing = "response_field" if self.prompt_field else "prompt_field"
            raise ConfigError(f"{where}.{missing}", "is empty but its partner is set",
                              "set both prompt_field and response_field (or neither)")
        if self.prompt_field and self.source != "jsonl":
            raise ConfigError(f"{where}.prompt_field", f"only applies to source jsonl, not '{self.source}'",
                              "remove it, or use source: jsonl")

    @property
    def separator_label(self) -> str:
        """How documents were delimited, for `sparsecl domains` and summaries."""
        if self.source == "txt":
            if self.separator.prefix:
                return f"line prefix {self.separator.prefix!r}"
            if self.separator.regex:
                return f"line regex {self.separator.regex!r}"
            return "blank lines"
        return {"builtin": "built-in documents", "dir": "one document per file", "jsonl": "one document per record",
                "hf": "one document per row"}[self.source]


HF_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}
"""Local data files that source hf reads, by suffix, and the `datasets` builder that reads each."""


def is_local(path: str) -> bool:
    """A path that names a local file or folder rather than a hub dataset ('owner/name'); a data-file suffix
    counts as local, so a mistyped file name is reported as a missing file, not looked up on the hub."""
    return (path.startswith((".", "/", "~")) or Path(path).suffix.lower() in HF_FILE_BUILDERS
            or Path(path).expanduser().exists())


BYTE_TOKENS = 256
"""Vocabulary of the byte tokenizer: one token per byte value; NUL (never in text) separates documents."""

BYTE_VOCAB = 257
"""Smallest vocabulary with a byte fallback: 256 byte tokens plus the document separator."""


@dataclass
class TokenizerConfig:
    kind: Literal["byte", "bpe", "file"] = "byte"
    """'byte' (vocab 256), 'bpe' (byte-level BPE trained on the run's training splits) or 'file' (path)."""
    vocab_size: int = 4096
    """kind=bpe: total vocabulary, 256 byte tokens + the document separator + merges (>= 257)."""
    train_bytes: int = 0
    """kind=bpe: train on at most this many bytes of training text, split evenly over domains (0 = all)."""
    path: str = ""
    """kind=file: a byte-level Hugging Face tokenizer.json to use as is."""

    @property
    def model_vocab(self) -> int:
        """Vocabulary the model needs: known from the config for byte and bpe; 0 for a file, whose vocabulary
        ``sparsecl.train.validate`` reads when it loads the file."""
        return {"byte": BYTE_TOKENS, "bpe": self.vocab_size}.get(self.kind, 0)

    def __post_init__(self) -> None:
        if self.kind == "bpe" and self.vocab_size < BYTE_VOCAB:
            raise ConfigError("data.tokenizer.vocab_size", f"{self.vocab_size} is too small for the byte fallback "
                              f"(256 byte tokens + the document separator)", f"use at least {BYTE_VOCAB}")
        if self.vocab_size > 2**32:
            raise ConfigError("data.tokenizer.vocab_size", f"must be <= 2**32, got {self.vocab_size}")
        if self.train_bytes < 0:
            raise ConfigError("data.tokenizer.train_bytes", "must be >= 0")
        if self.kind == "file" and not self.path:
            raise ConfigError("data.tokenizer.path", "kind 'file' needs a path", "set it to a tokenizer.json")
        if self.kind != "file" and self.path:
            raise ConfigError("data.tokenizer.path", f"is only used with kind 'file', not '{self.kind}'",
                              "set data.tokenizer.kind=file or remove the path")


@dataclass
class DataConfig:
    domains: list[DomainSpec] = field(default_factory=list)
    """Domains to train on and evaluate; a plain string names a built-in domain."""
    val_fraction: float = 0.1
    """Fraction of documents (by hash) held out for validation."""
    split_salt: str = "sparsecl"
    """Salt of the document hash that assigns train/val; change it to draw another split."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """How text becomes tokens; a plain string names the kind (byte, bpe)."""
    cache_dir: str = ""
    """Token cache folder shared by runs ('' = $SPARSECL_CACHE_DIR, else ~/.cache/sparsecl)."""

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
    objective: Literal["lm", "sft", "rl"] = "lm"
    """'lm' next-token loss everywhere; 'sft' loss on response tokens only; 'rl' GRPO with the task's reward
    (sft and rl need prompt/response domains: a built-in task or a jsonl with prompt_field/response_field)."""
    lr: float | None = None
    """Peak learning rate of this phase instead of train.lr (its floor scales along: min_lr x lr / train.lr);
    e.g. a lower one for an rl phase, whose policy-gradient steps are noisier than next-token steps."""

    def __post_init__(self) -> None:
        if self.lr is not None and self.lr <= 0:
            raise ConfigError("schedule.lr", f"must be > 0, got {self.lr}", "remove it to use train.lr")
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
    grad_accum: int = 1
    """Micro-steps per optimizer step: batch_size (global) = micro-batch x grad_accum x ranks."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """How torchrun's ranks share the model: replicated (DDP) or sharded per block (FSDP2)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward instead of storing them (less memory, ~1/3 more
    compute)."""
    compile: bool = False
    """torch.compile each block (off by default: see README, Scale out, for where it pays)."""

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
        if self.grad_accum < 1:
            raise ConfigError("train.grad_accum", f"must be >= 1, got {self.grad_accum}")
        if self.batch_size % self.grad_accum:
            raise ConfigError("train.batch_size", f"is {self.batch_size}, not divisible by train.grad_accum "
                              f"({self.grad_accum})", "choose a multiple of it")


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
    task_prompts: int = 32
    """Validation prompts per task domain scored by greedy exact match at every evaluation (0 = none)."""

    def __post_init__(self) -> None:
        if self.task_prompts < 0:
            raise ConfigError("eval.task_prompts", "must be >= 0")
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

    @property
    def sample_tokens(self) -> int:
        """``tokens`` once ``resolve`` has settled it (every RunConfig does so when it is built)."""
        if self.tokens is None:
            raise RuntimeError("EvalConfig.resolve() has not run")
        return self.tokens

    def resolve(self, block_size: int) -> None:
        """Settle the sample size in tokens (the saved config then holds tokens only)."""
        if self.batches is not None:
            self.tokens, self.batches = self.batches * self.batch_size * block_size, None
        elif self.tokens is None:
            self.tokens = DEFAULT_EVAL_TOKENS


DEFAULT_EVAL_TOKENS = 16384
"""Scored tokens per domain by default: 128 windows of 128 at quickstart size."""


@dataclass
class RLConfig:
    """GRPO (Shao et al. 2024, arXiv 2402.03300) knobs for phases with objective rl."""

    group_size: int = 4
    """Completions sampled per prompt (G); advantages are normalised within each group, so G >= 2."""
    temperature: float = 1.0
    """Sampling temperature; log-probabilities, ratios and the KL use the same tempered distribution."""
    clip: float = 0.2
    """Clip range c of the policy ratio: clip(rho, 1 - c, 1 + c)."""
    beta: float = 0.04
    """Weight of the KL penalty to the reference (the model at the start of the phase)."""
    completion_length: int = 16
    """Most tokens sampled per completion (it stops earlier at the end-of-answer token)."""
    prompts: int = 0
    """Prompts per step; 0 means max(1, train.batch_size // group_size)."""
    updates_per_batch: int = 1
    """Optimizer steps on each sampled batch (GRPO's mu): sampling happens every this many steps, and the
    policy ratio and its clip measure how far the steps since then moved the policy."""

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ConfigError("rl.group_size", f"must be >= 2, got {self.group_size}",
                              "advantages are normalised within a group; use e.g. rl.group_size=4")
        if self.temperature <= 0:
            raise ConfigError("rl.temperature", f"must be > 0, got {self.temperature}")
        if not 0 < self.clip < 1:
            raise ConfigError("rl.clip", f"must be in (0, 1), got {self.clip}")
        if self.beta < 0:
            raise ConfigError("rl.beta", f"must be >= 0, got {self.beta}")
        if self.completion_length < 1:
            raise ConfigError("rl.completion_length", f"must be >= 1, got {self.completion_length}")
        if self.prompts < 0:
            raise ConfigError("rl.prompts", f"must be >= 0, got {self.prompts}")
        if self.updates_per_batch < 1:
            raise ConfigError("rl.updates_per_batch", f"must be >= 1, got {self.updates_per_batch}",
                              "use 1 to sample a new batch every step")


@dataclass
class MethodConfig:
    name: str = "naive"
    """Continual-learning method (the README's method table lists them)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Method hyperparameters, validated by the method itself."""
