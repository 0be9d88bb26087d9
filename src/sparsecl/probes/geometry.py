"""Weight-space geometry without curvature: subspace rotation, linear mode connectivity, effective rank."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn as nn

from sparsecl.model.gpt import GPT
from sparsecl.probes import register
from sparsecl.probes.context import ProbeContext
from sparsecl.probes.linalg import effective_rank, effective_weight, module_weights, principal_angles_deg
from sparsecl.store.checkpoint import model_tensors


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def head_circuits(model: GPT) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per block and head, the factors of QK = W_Q_h^T W_K_h and OV = W_O_h W_V_h: (C, D) and (D, C).

    Single W_Q or W_K are not identifiable (any invertible D x D map between them leaves attention unchanged);
    the (C, C) products are. They are kept factored: the product has rank <= D and its subspace is cheaper so.
    """
    out = {}
    H = model.cfg.n_head
    for i, block in enumerate(model.blocks):
        qkv = effective_weight(block.attn.qkv).detach()  # (3C, C)
        wo = effective_weight(block.attn.o).detach()  # (C, C)
        C = wo.shape[0]
        D = C // H
        wq, wk, wv = qkv[:C], qkv[C:2 * C], qkv[2 * C:]
        for h in range(H):
            r = slice(h * D, (h + 1) * D)
            out[f"L{i}.h{h}.qk"] = (wq[r].T, wk[r])
            out[f"L{i}.h{h}.ov"] = (wo[:, r], wv[r])
    return out


@register("subspace_rotation", "principal angles between top-k left singular subspaces of every weight (and of "
          "per-head QK and OV circuits) before and after the phase", "1 SVD per matrix")
def subspace_rotation(ctx: ProbeContext) -> dict[str, float]:
    prev = ctx.model_at(ctx.prev_phase())
    if prev is None:
        return {}
    k = ctx.cfg.probe.subspace_k
    out: dict[str, float] = {}
    mats: list[float] = []
    a, b = module_weights(prev), module_weights(ctx.model)
    for name, wa in a.items():
        if wa.dim() != 2 or name.startswith(("wte", "wpe")):
            continue
        ang = principal_angles_deg(wa, b[name], k)
        out[f"{name}/angle_mean_deg"] = float(ang.mean())
        out[f"{name}/angle_max_deg"] = float(ang.max())
        mats.append(float(ang.mean()))
    ca, cb = head_circuits(prev), head_circuits(ctx.model)
    kh = min(k, ctx.cfg.model.d_model // ctx.cfg.model.n_head)  # rank of a head circuit is at most D
    per_kind: dict[str, list[float]] = {"qk": [], "ov": []}
    for name, (la, ra) in ca.items():
        lb, rb = cb[name]
        ang = principal_angles_deg(la, lb, kh, ra, rb)
        ma, mb = la @ ra, lb @ rb
        out[f"{name}/angle_mean_deg"] = float(ang.mean())
        out[f"{name}/rel_change"] = float((mb - ma).norm() / ma.norm().clamp_min(1e-12))
        per_kind[name.rsplit(".", 1)[1]].append(float(ang.mean()))
    out["matrix_angle_mean_deg"] = _mean(mats)
    out["qk_angle_mean_deg"] = _mean(per_kind["qk"])
    out["ov_angle_mean_deg"] = _mean(per_kind["ov"])
    return out


def interpolate_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float
                       ) -> dict[str, torch.Tensor]:
    """(1 - alpha) a + alpha b for every floating tensor (parameters and buffers); others (masks) from b."""
    return {k: ((1 - alpha) * a[k] + alpha * v) if v.is_floating_point() else v for k, v in b.items()}


@torch.no_grad()
def lmc_barrier(template: nn.Module, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                losses: Callable[[nn.Module], dict[str, float]], alphas: list[float],
                known: dict[float, dict[str, float]] | None = None) -> dict[str, float]:
    """Per loss name: B = max_alpha [L(theta_alpha) - ((1 - alpha) L(theta_0) + alpha L(theta_1))].

    ``alphas`` must contain 0 and 1 (the endpoints define the straight line the barrier is measured from).
    ``known`` holds losses already measured at some alphas (e.g. the endpoints, which are the two checkpoints
    themselves: theta_0 = a and theta_1 = b exactly), which are then not recomputed.
    """
    if 0.0 not in alphas or 1.0 not in alphas:
        raise ValueError("the alpha grid must include 0 and 1")
    curve: dict[float, dict[str, float]] = dict(known or {})
    todo = [al for al in alphas if al not in curve]
    model = copy.deepcopy(template) if todo else template
    for al in todo:
        model.load_state_dict(interpolate_states(a, b, al), strict=False)
        curve[al] = losses(model)
    out = {}
    for name in curve[0.0]:
        l0, l1 = curve[0.0][name], curve[1.0][name]
        out[name] = max(curve[al][name] - ((1 - al) * l0 + al * l1) for al in alphas)
    return out


@register("lmc", "linear-mode-connectivity barrier between the previous phase end and now, per seen domain",
          "lmc_points forwards per domain")
def lmc(ctx: ProbeContext) -> dict[str, float]:
    a = ctx.states(ctx.prev_phase())
    if a is None:
        return {}
    b = model_tensors(ctx.model)
    a = {k: v.to(ctx.device) for k, v in a.items() if k in b}
    n = ctx.cfg.probe.lmc_points
    alphas = [i / (n - 1) for i in range(n)]
    doms = ctx.seen

    def losses(m: nn.Module) -> dict[str, float]:
        m.eval()
        return {d: float(m.loss(*ctx.probe_batch(d))) for d in doms}

    # the endpoints are the previous phase's model and the current one: their probe-batch losses come with the
    # features other probes use (same forward, same numbers), so only the inner alphas need forwards here
    ends = {0.0: ctx.features_loss(doms, ctx.prev_phase()), 1.0: ctx.features_loss(doms, None)}
    bar = lmc_barrier(ctx.model, a, b, losses, alphas, {k: v for k, v in ends.items() if v is not None})
    out = {f"{d}/barrier": v for d, v in bar.items()}
    old = [bar[d] for d in ctx.old]
    new = [bar[d] for d in ctx.current if d in bar]
    if old:
        out["old_barrier_mean"] = _mean(old)
    if new:
        out["new_barrier_mean"] = _mean(new)
    return out


@register("effective_rank", "exp entropy of normalised singular values of the features per layer, raw and "
          "centred, on >= 4*d_model tokens per domain", "1 SVD per layer and domain")
def effective_rank_probe(ctx: ProbeContext) -> dict[str, float]:
    out: dict[str, float] = {}
    raw_f, cen_f = [], []
    d_model = ctx.cfg.model.d_model
    for d in ctx.windows:
        f = ctx.features(d)
        if f.final.shape[0] < 4 * d_model:  # too few tokens: the estimate would be capped by N, not by d
            continue
        for lyr, h in enumerate(f.hidden):
            out[f"{d}/L{lyr}/raw"] = effective_rank(h)
            out[f"{d}/L{lyr}/centred"] = effective_rank(h, centred=True)
        out[f"{d}/final/raw"] = effective_rank(f.final)
        out[f"{d}/final/centred"] = effective_rank(f.final, centred=True)
        raw_f.append(out[f"{d}/final/raw"])
        cen_f.append(out[f"{d}/final/centred"])
    if raw_f:
        out["final_raw_mean"] = _mean(raw_f)
        out["final_centred_mean"] = _mean(cen_f)
    return out
