"""Config sections for what a run measures and reports besides the loss matrix: probes and trackers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sparsecl.errors import ConfigError

FisherLabels = Literal["empirical", "sampled"]
"""Labels of a Fisher estimate, the one vocabulary of EWC (method.params.labels) and the fisher probe
(probe.fisher_labels): the data's next tokens ('empirical') or tokens drawn from the model ('sampled', the true
Fisher)."""


@dataclass
class ProbeConfig:
    """Knobs of the training-progression probes (``sparsecl.probes``); DESIGN.md section 8."""

    batch_size: int = 4
    """Validation windows per domain in the fixed probe batch (raised so effective rank sees >= 4*d_model tokens;
    5 windows at quickstart size). Every per-domain probe forward and gradient runs on it."""
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
    plasticity_batch: int = 4
    """Sequences per step of the plasticity probe's fresh task (4 x block_size tokens cover every token of the
    vocabulary about twice a step; the probe's K steps cost about K x plasticity_batch / train.batch_size
    training steps, so this sets most of the probes' fixed cost per probe point)."""
    noise_batch: int = 16
    """Sequences with one gradient each, for the gradient noise scale and the Fisher diagonal."""
    fisher_labels: Literal["empirical", "sampled", "model"] = "empirical"
    """Fisher from the data's labels ('empirical') or from labels sampled from the model ('sampled', the true
    Fisher); 'model', its earlier name, is read as 'sampled'."""

    def __post_init__(self) -> None:
        if self.fisher_labels == "model":  # run folders written before EWC and this probe shared FisherLabels
            self.fisher_labels = "sampled"
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
                  "plasticity", "forgetting_kl"]
# Left out of the default for cost (benchmarks/probe_cost.py, quickstart model, 2 CPU threads): hessian_eigs
# (~26-41% of a phase at 40 Lanczos steps) and hessian_trace (~24% at 32 samples). The default set, at every
# phase end of five built-in domains at 100 steps per phase: ~16% of training time (CPU time; 29% before the
# shared forwards and the smaller probe and plasticity batches); on domains5 (with the feature and subspace
# caches) 18% of training time at the preset's 150 steps per phase (13% CPU time), 11% at 200 steps.


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
