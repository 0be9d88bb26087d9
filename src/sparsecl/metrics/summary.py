"""Build a run's ``RunSummary`` (``store.record``) once, from its evaluation history and the trainer's totals."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sparsecl.config import RunConfig
from sparsecl.metrics import cl
from sparsecl.sparse.apply import LayerInfo, dead_unit_fraction, layer_masks, nonzero_split
from sparsecl.stats.labels import SIGN_CONVENTIONS
from sparsecl.store.record import LayerRecord, PhaseRecord, RunSummary, RunTotals

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
