"""A run's results: ``RunSummary``, built once from the evaluation history and the trainer's totals, and
serialised as ``summary.json``.

The JSON keys are the ones summary.json has always had (``from_json`` reads files written before this type
existed, and keys it does not know are kept in ``extra`` and written back), so old runs, the index and the
report keep loading.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from sparsecl.config import RunConfig
from sparsecl.metrics import cl
from sparsecl.metrics.labels import SIGN_CONVENTIONS
from sparsecl.sparse.apply import LayerInfo, dead_unit_fraction, layer_masks, nonzero_split

if TYPE_CHECKING:
    from sparsecl.methods.base import Method
    from sparsecl.model.gpt import GPT

TIMING_KEYS = ("wall_seconds", "train_seconds", "tokens_per_second", "ms_per_step", "eval_seconds", "probe_seconds",
               "checkpoint_seconds")
"""Summary keys that measure time rather than results: they differ between otherwise identical runs."""


def matrices(history: list[dict[str, Any]], domains: list[str], n_phases: int) -> dict[str, list[list[float]]]:
    """Rows 0..T from the phase-end evaluations (row 0 = init)."""
    ends = {(r["phase"], r["domain"]): r for r in history if r["phase_end"]}
    out = {}
    for key in ("loss", "bpb", "acc"):
        out[key] = [[float(ends[(j, d)][key]) for d in domains] for j in range(n_phases + 1)]
    return out


def curves(history: list[dict[str, Any]], domain: str, phase: int) -> tuple[list[int], list[float]]:
    """Loss of ``domain`` during ``phase``, steps counted from the phase start (0 = end of previous phase)."""
    prev = [r for r in history if r["domain"] == domain and r["phase"] == phase - 1 and r["phase_end"]]
    inside = [r for r in history if r["domain"] == domain and r["phase"] == phase]
    pts = prev[-1:] + inside
    return [0] + [r["phase_step"] for r in inside], [r["loss"] for r in pts]


def _round(x: float | None, nd: int = 6) -> float | None:
    return None if x is None else round(float(x), nd)


def _by_domain(domains: list[str], values: list[float | None], keep_none: bool = True) -> dict[str, float | None]:
    return {d: _round(v) for d, v in zip(domains, values, strict=True) if keep_none or v is not None}


Matrix = list[list[float]]

STAGE_KEYS = ("objectives", "tasks", "task_accuracy", "stage_evals", "lm_forgetting_per_phase", "objective_stats")
"""Keys of the staged-training block (``tasks``, ``task_accuracy`` and ``stage_evals`` only with task domains)."""
MATCHING_KEYS = ("dense_reference_params", "matched_nonzero_params", "matched_d_model", "matched_d_ff",
                 "dense_reference_nonzero_split")
"""Keys of the iso-parameter matching block (``sparse.matching.Matching.summary``)."""
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
    ``sign_conventions`` (``metrics.labels``)."""
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
        kw["phases"] = [PhaseRecord(list(p["domains"]), int(p["steps"])) for p in kw.get("phases") or []]
        kw["layers"] = [LayerRecord(li["name"], list(li["shape"]), li["density"], li["nonzero"],
                                    li.get("dead_rows"), li.get("dead_cols")) for li in kw.get("layers") or []]
        kw["extra"] = obj
        return cls(**kw)


def build_summary(cfg: RunConfig, history: list[dict[str, Any]], phases: list[list[str]], method: Method,
                  scheduled: list[str], layers: list[LayerInfo], model: GPT, totals: RunTotals) -> RunSummary:
    """The run's summary, built once at its end. ``model`` is the trained model: its masks give the dead units
    and the nonzero split."""
    domains = cfg.domain_names
    T = len(phases)
    m = matrices(history, domains, T)
    trained = [method.counts_as_trained(j + 1, list(ph), scheduled) for j, ph in enumerate(phases)]
    t, s_last = cl.first_trained(trained, domains), cl.last_trained(trained, domains)
    L, A = m["loss"], m["acc"]
    masks = layer_masks(model, cfg.sparse)  # the final model's: layers a method added are counted too
    speed = {}
    for d, ti in zip(domains, t, strict=True):
        if ti is not None:
            speed[d] = cl.learning_speed(*curves(history, d, ti))
    masked_total = sum(li.shape[0] * li.shape[1] for li in layers)
    masked_nnz = sum(li.nonzero for li in layers)
    steps = sum(p.steps for p in cfg.schedule)
    train_seconds = totals.train_seconds
    return RunSummary(
        name=cfg.name,
        group=cfg.group or cfg.name,
        domains=domains,
        phases=[PhaseRecord(list(p.domains), p.steps) for p in cfg.schedule],
        first_trained_phase=t,
        loss_matrix=L,
        bpb_matrix=m["bpb"],
        acc_matrix=A,
        avg_seen_loss_by_phase=cl.average_seen_loss(L, t),
        forgetting_per_domain=cl.forgetting_per_domain(L, t),
        avg_forgetting=_round(cl.average_forgetting(L, t)),
        bwt=_round(cl.backward_transfer(L, t)),
        bwt_last=_round(cl.backward_transfer_last(L, s_last)),
        fwt=_round(cl.forward_transfer(L, t)),
        last_trained_phase=s_last,
        learned_drop=_by_domain(domains, cl.learned_drop(L, t)),
        normalised_forgetting=_by_domain(domains, cl.normalised_forgetting(L, t), keep_none=False),
        avg_normalised_forgetting=_round(cl.average_normalised_forgetting(L, t)),
        final_avg_loss=_round(cl.average_seen_loss(L, t)[-1]),
        final_avg_bpb=_round(cl.average_seen_loss(m["bpb"], t)[-1]),
        acc_avg_forgetting=_round(cl.accuracy_average_forgetting(A, t)),
        acc_bwt=_round(cl.accuracy_backward_transfer(A, t)),
        acc_bwt_last=_round(cl.accuracy_backward_transfer_last(A, s_last)),
        acc_fwt=_round(cl.accuracy_forward_transfer(A, t)),
        mean_final_acc_seen=_round(cl.average_seen_loss(A, t)[-1]),  # the same seen-domain mean, of accuracy
        learning_speed=speed,
        sign_conventions=dict(SIGN_CONVENTIONS),
        params_total=totals.params_total,
        params_nonzero=totals.params_nonzero,
        masked_params_total=masked_total,
        masked_params_nonzero=masked_nnz,
        density=round(masked_nnz / masked_total, 6) if masked_total else 1.0,
        target_density=cfg.sparse.density,
        topology="dense" if cfg.sparse.is_dense else cfg.sparse.topology,
        allocation=cfg.sparse.allocation,
        backend=cfg.sparse.backend,
        dead_unit_fraction=round(dead_unit_fraction(masks), 6),
        nonzero_split=nonzero_split(model, cfg.sparse),
        layers=[LayerRecord(li.name, list(li.shape), round(li.density, 6), li.nonzero, li.dead_rows, li.dead_cols)
                for li in layers],
        method=cfg.method.name,
        method_memory_bytes=method.memory_bytes(),
        method_info=method.summary_info() if hasattr(method, "summary_info") else {},
        seed=cfg.seed,
        steps=steps,
        train_seconds=round(train_seconds, 3),
        ms_per_step=round(1000 * train_seconds / max(1, steps), 3),
        tokens_per_second=round(totals.train_tokens / train_seconds, 1) if train_seconds > 0 else None,
        wall_seconds=round(totals.wall_seconds, 3),
        eval_seconds=round(totals.eval_seconds, 3),
        probe_seconds=round(totals.probe_seconds, 3),
        checkpoint_seconds=round(totals.checkpoint_seconds, 3),
        eval_tokens=totals.eval_tokens,
        probes=totals.probes,
        stages=totals.stages,
        data=totals.data,
        data_sources=totals.data_sources,
        tokenizer=totals.tokenizer,
        matching=totals.matching,
    )
