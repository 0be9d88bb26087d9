"""Optional experiment trackers: TensorBoard, Weights & Biases, MLflow (``log.*`` in the config, all off).

The trainer calls ``log_evals`` wherever it records evaluation rows, and probes may call ``log_probes``.
What is logged: per-domain loss, bits per byte and accuracy against the global step; the average loss over
domains seen so far; at every phase end the loss matrix so far (a heatmap image in TensorBoard, a table in
W&B, a JSON artifact in MLflow). Trackers never change what a run computes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from sparsecl.config import LogConfig, RunConfig, to_dict
from sparsecl.errors import ConfigError


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _loss_matrix(history: list[dict[str, Any]], domains: list[str], upto: int) -> list[list[float]]:
    ends = {(r["phase"], r["domain"]): r["loss"] for r in history if r["phase_end"]}
    return [[float(ends[(j, d)]) for d in domains] for j in range(upto + 1) if all((j, d) in ends for d in domains)]


class Tracker:
    def __init__(self, cfg: RunConfig, run_dir: Path, run_id: str, purge_step: int | None = None) -> None:
        log: LogConfig = cfg.log
        self.domains = cfg.domain_names
        self.phases = [p.domains for p in cfg.schedule]
        self.tb: Any = None
        self.wandb: Any = None
        self.mlflow: Any = None
        if log.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional: tensorboard (log.tensorboard)
            except ImportError as e:
                raise ConfigError("log.tensorboard", "is true but tensorboard is not installed",
                                  "pip install tensorboard (or sparsecl[logging])") from e
            self.tb = SummaryWriter(log_dir=str(Path(log.dir) / run_id if log.dir else run_dir / "tensorboard"),
                                    purge_step=purge_step)
        if log.wandb:
            try:
                import wandb  # optional: wandb (log.wandb)
            except ImportError as e:
                raise ConfigError("log.wandb", "is true but wandb is not installed", "pip install wandb") from e
            self.wandb = wandb.init(project=log.project, name=run_id, id=run_id, resume="allow", dir=str(run_dir),
                                    config=to_dict(cfg), reinit=True)
        if log.mlflow:
            try:
                import mlflow  # optional: mlflow (log.mlflow)
            except ImportError as e:
                raise ConfigError("log.mlflow", "is true but mlflow is not installed", "pip install mlflow") from e
            mlflow.set_experiment(log.project)
            self.mlflow = mlflow
            mlflow.start_run(run_name=run_id)
            params = list(_flatten(to_dict(cfg)).items())
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per request
                mlflow.log_params(dict(params[i:i + 100]))

    def _scalars(self, values: dict[str, float], step: int) -> None:
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)
        if self.mlflow is not None:
            self.mlflow.log_metrics({k.replace("/", "."): v for k, v in values.items()}, step=step)

    def log_evals(self, phase: int, step: int, phase_end: bool, rows: list[dict[str, Any]],
                  history: list[dict[str, Any]]) -> None:
        values: dict[str, float] = {}
        for r in rows:
            for key in ("loss", "bpb", "acc"):
                values[f"eval_{key}/{r['domain']}"] = float(r[key])
        seen = {d for ph in self.phases[:phase] for d in ph}
        seen_loss = [float(r["loss"]) for r in rows if r["domain"] in seen]
        if seen_loss:
            values["eval_loss/avg_seen"] = sum(seen_loss) / len(seen_loss)
        self._scalars(values, step)
        if phase_end:
            self._matrix(phase, step, _loss_matrix(history, self.domains, phase))

    def _matrix(self, phase: int, step: int, L: list[list[float]]) -> None:
        if not L:
            return
        if self.tb is not None:
            import matplotlib  # optional: only the TensorBoard heatmap draws (Agg before pyplot)

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt  # optional: only the TensorBoard heatmap draws

            fig, ax = plt.subplots(figsize=(1.5 + 0.7 * len(self.domains), 1.2 + 0.3 * len(L)))
            im = ax.imshow(L, aspect="auto", cmap="viridis_r")
            ax.set_xticks(range(len(self.domains)), self.domains, rotation=30, ha="right")
            ax.set_ylabel("after phase")
            fig.colorbar(im, ax=ax, label="loss")
            self.tb.add_figure("loss_matrix", fig, step, close=True)
            self.tb.add_text("loss_matrix_json", str(L), step)
        if self.wandb is not None:
            import wandb  # optional: wandb (log.wandb)

            self.wandb.log({"loss_matrix": wandb.Table(columns=self.domains, data=L)}, step=step)
        if self.mlflow is not None:
            self.mlflow.log_dict({"domains": self.domains, "loss_matrix": L}, f"loss_matrix/phase-{phase:03d}.json")

    def log_probes(self, step: int, values: dict[str, float]) -> None:
        """Probe values by name (e.g. {'sharpness/lambda_max': 12.3}) at a global step."""
        self._scalars({f"probe/{k}": float(v) for k, v in values.items()}, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.mlflow is not None:
            self.mlflow.end_run()


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
"""log.<flag> -> the package it needs."""


def check_trackers(log: LogConfig) -> None:
    """Every tracker switched on is importable (checked before a run writes anything)."""
    for flag, package in TRACKER_PACKAGES.items():
        if getattr(log, flag) and importlib.util.find_spec(package) is None:
            raise ConfigError(f"log.{flag}", f"is true but {package} is not installed",
                              f"pip install {package} (or sparsecl[logging]), or set log.{flag}=false")


def open_tracker(cfg: RunConfig, run_dir: Path, run_id: str, purge_step: int | None = None) -> Tracker | None:
    log = cfg.log
    if not (log.tensorboard or log.wandb or log.mlflow):
        return None
    return Tracker(cfg, run_dir, run_id, purge_step)
