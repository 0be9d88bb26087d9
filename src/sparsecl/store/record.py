"""``RunSummary``: everything a run's ``summary.json`` holds, typed, and its JSON form.

The JSON keys are the ones summary.json has always had (``from_json`` reads files written before this type
existed, and keys it does not know are kept in ``extra`` and written back), so old runs, the index and the
report keep loading. No torch here: the report and the statistics read summaries without it.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

Matrix = list[list[float]]

STAGE_KEYS = ("objectives", "tasks", "task_accuracy", "stage_evals", "lm_forgetting_per_phase", "objective_stats")
"""Keys of the staged-training block (``tasks``, ``task_accuracy`` and ``stage_evals`` only with task domains)."""
MATCHING_KEYS = ("dense_reference_params", "matched_nonzero_params", "matched_d_model", "matched_d_ff",
                 "dense_reference_nonzero_split")
"""Keys of the iso-parameter matching block (``sparse.matching.Matching.summary``)."""
_BLOCKS = ("stages", "matching", "extra")
"""Fields that are not JSON keys: their keys are flat in the JSON."""
LEGACY_KEYS = {"final_avg_acc": "mean_final_acc_seen"}
"""Old JSON key -> field: still written (so readers of old files keep working) and read when the new key is
absent."""


@dataclass
class PhaseRecord:
    domains: list[str]
    steps: int


@dataclass
class LayerRecord:
    """One masked layer as drawn (``sparse.apply.LayerInfo``); ``dead_rows``/``dead_cols`` None where a layer was
    added by a method after the masks were drawn."""
    name: str
    shape: list[int]
    density: float
    nonzero: int
    dead_rows: int | None = None
    dead_cols: int | None = None


@dataclass
class RunTotals:
    """What the trainer measured besides the evaluations: parameter counts, times, tokens and the blocks other
    layers contribute (stages, data, tokenizer, matching), passed once to ``build_summary``."""
    params_total: int
    params_nonzero: int
    train_seconds: float
    train_tokens: int
    wall_seconds: float
    eval_seconds: float
    probe_seconds: float
    checkpoint_seconds: float
    eval_tokens: dict[str, int]
    probes: list[dict[str, Any]]
    stages: dict[str, Any]
    data: dict[str, Any]
    data_sources: dict[str, Any]
    tokenizer: dict[str, Any]
    matching: dict[str, Any]


@dataclass
class RunSummary:
    """Everything ``summary.json`` holds, in its key order. Loss-form measures follow DESIGN §5; signs are in
    ``sign_conventions`` (``stats.labels``)."""
    name: str
    group: str
    domains: list[str]
    phases: list[PhaseRecord]
    first_trained_phase: list[int | None]
    loss_matrix: Matrix
    bpb_matrix: Matrix
    acc_matrix: Matrix
    avg_seen_loss_by_phase: list[float | None]
    forgetting_per_domain: list[float | None]
    avg_forgetting: float | None
    bwt: float | None
    bwt_last: float | None
    fwt: float | None
    last_trained_phase: list[int | None]
    learned_drop: dict[str, float | None]
    normalised_forgetting: dict[str, float | None]
    avg_normalised_forgetting: float | None
    final_avg_loss: float | None
    """Mean over the domains trained by the last phase of their final loss."""
    final_avg_bpb: float | None
    acc_avg_forgetting: float | None
    acc_bwt: float | None
    acc_bwt_last: float | None
    acc_fwt: float | None
    mean_final_acc_seen: float | None
    """Mean over the domains trained by the last phase of their final accuracy (the last row of the accuracy
    matrix, not an average over the matrix); JSON key ``mean_final_acc_seen``, also written as the legacy
    ``final_avg_acc``."""
    learning_speed: dict[str, dict[str, Any]]
    sign_conventions: dict[str, str]
    params_total: int
    params_nonzero: int
    masked_params_total: int
    masked_params_nonzero: int
    density: float
    target_density: float
    topology: str
    allocation: str
    backend: str
    dead_unit_fraction: float
    nonzero_split: dict[str, int]
    layers: list[LayerRecord]
    method: str
    method_memory_bytes: int
    method_info: dict[str, Any]
    seed: int
    steps: int
    train_seconds: float
    ms_per_step: float
    tokens_per_second: float | None
    wall_seconds: float | None
    eval_seconds: float | None = None
    probe_seconds: float | None = None
    checkpoint_seconds: float | None = None
    eval_tokens: dict[str, int] = field(default_factory=dict)
    probes: list[dict[str, Any]] = field(default_factory=list)
    stages: dict[str, Any] = field(default_factory=dict)
    """The staged-training block, ``STAGE_KEYS`` (flat in the JSON)."""
    data: dict[str, Any] = field(default_factory=dict)
    data_sources: dict[str, Any] = field(default_factory=dict)
    tokenizer: dict[str, Any] = field(default_factory=dict)
    matching: dict[str, Any] = field(default_factory=dict)
    """The matching block, ``MATCHING_KEYS`` (flat in the JSON)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys this version does not know (a newer or hand-edited file): kept and written back unchanged."""

    def to_json(self) -> dict[str, Any]:
        """The summary.json object: the same keys, in the same order, as every earlier version wrote."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("stages", "matching", "extra"):
                out.update(v)
            elif f.name == "phases":
                out[f.name] = [{"domains": list(p.domains), "steps": p.steps} for p in v]
            elif f.name == "layers":
                out[f.name] = [{"name": li.name, "shape": list(li.shape), "density": li.density, "nonzero": li.nonzero,
                                "dead_rows": li.dead_rows, "dead_cols": li.dead_cols} for li in v]
            elif f.name == "mean_final_acc_seen":
                out["final_avg_acc"] = v  # the legacy key, where it always stood; the named one follows
                out[f.name] = v
            else:
                out[f.name] = v
        return out

    def value(self, key: str) -> Any:
        """The value summary.json holds under ``key`` (None where it holds none): how readers that take a
        measure by name (the statistics) read it."""
        if key in LEGACY_KEYS:
            key = LEGACY_KEYS[key]
        if key in _BLOCKS:
            return None
        if key in {f.name for f in fields(self)}:
            return getattr(self, key)
        for block in (self.stages, self.matching, self.extra):
            if key in block:
                return block[key]
        return None

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RunSummary:
        """A summary from its JSON object, also one written before this type existed: missing keys become None
        (or empty), the legacy ``final_avg_acc`` fills ``mean_final_acc_seen``, unknown keys go to ``extra``."""
        obj = dict(obj)
        for old, new in LEGACY_KEYS.items():
            if old in obj:
                value = obj.pop(old)
                obj.setdefault(new, value)
        kw: dict[str, Any] = {"stages": {k: obj.pop(k) for k in STAGE_KEYS if k in obj},
                              "matching": {k: obj.pop(k) for k in MATCHING_KEYS if k in obj}}
        names = {f.name: f for f in fields(cls)}
        for name, f in names.items():
            if name in kw or name == "extra":
                continue
            if name in obj:
                kw[name] = obj.pop(name)
            elif f.default is MISSING and f.default_factory is MISSING:
                kw[name] = None  # written before the key existed
        kw["phases"] = [PhaseRecord(list(p["domains"]), int(p.get("steps", 0))) for p in kw.get("phases") or []]
        kw["layers"] = [LayerRecord(li["name"], list(li["shape"]), li["density"], li["nonzero"],
                                    li.get("dead_rows"), li.get("dead_cols")) for li in kw.get("layers") or []]
        kw["extra"] = obj
        return cls(**kw)


def as_summary(s: RunSummary | dict[str, Any]) -> RunSummary:
    """A reader's typed view of a summary it got as a JSON object (from summary.json or the index)."""
    return s if isinstance(s, RunSummary) else RunSummary.from_json(s)


def read_summary(run_dir: Path) -> RunSummary:
    """A finished run's summary.json, typed: the one reader of the file for the trainer's callers and the report."""
    return RunSummary.from_json(json.loads((run_dir / "summary.json").read_text()))
