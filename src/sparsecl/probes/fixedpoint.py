"""Fixed-point progression: how far each block moves the residual stream, how representations and
parameters drift between checkpoints."""

from __future__ import annotations

import torch

from sparsecl.model.gpt import trainable
from sparsecl.model.optim import lr_at
from sparsecl.probes import register
from sparsecl.probes.context import Features, ProbeContext
from sparsecl.probes.linalg import linear_cka, module_split, module_weights


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


@register("residual_norm", "per block: mean over tokens of |h_{l+1} - h_l| / |h_l|", "1 forward per domain")
def residual_norm(ctx: ProbeContext) -> dict[str, float]:
    out: dict[str, float] = {}
    per_block: dict[int, list[float]] = {}
    for d in ctx.windows:
        hs = ctx.features(d).hidden
        for lyr in range(len(hs) - 1):
            r = ((hs[lyr + 1] - hs[lyr]).norm(dim=1) / hs[lyr].norm(dim=1).clamp_min(1e-12)).mean().item()
            out[f"{d}/block{lyr}"] = r
            per_block.setdefault(lyr, []).append(r)
    for lyr, v in per_block.items():
        out[f"block{lyr}"] = _mean(v)
    out["mean"] = _mean([x for v in per_block.values() for x in v])
    return out


def _drift(a: Features, b: Features, prefix: str, out: dict[str, float]) -> list[float]:
    drifts = []
    for lyr, (x, y) in enumerate(zip(a.hidden, b.hidden, strict=True)):
        d = 1.0 - linear_cka(x, y, a.hidden_gram_norm(lyr), b.hidden_gram_norm(lyr))
        out[f"{prefix}/L{lyr}/drift"] = d
        out[f"{prefix}/L{lyr}/rel_frob"] = float((y.double() - x.double()).norm() / x.double().norm().clamp_min(1e-12))
        drifts.append(d)
    return drifts


@register("repr_drift", "1 - linear CKA per layer (and relative Frobenius change) vs the previous phase end and "
          "vs the end of the phase where each domain was learned", "2+ forwards per domain")
def repr_drift(ctx: ProbeContext) -> dict[str, float]:
    """L0 is the embedding output, L1..Ln the block outputs, all on the same probe tokens."""
    out: dict[str, float] = {}
    prev_all, learned_all = [], []
    for d in ctx.windows:
        cur = ctx.features(d)
        prev = ctx.features(d, ctx.prev_phase())
        if prev is not None:
            prev_all += _drift(prev, cur, f"{d}/prev", out)
    for d in ctx.old:
        ref = ctx.features(d, ctx.learned_phase[d])
        if ref is not None:
            learned_all += _drift(ref, ctx.features(d), f"{d}/learned", out)
    if prev_all:
        out["prev_drift_mean"] = _mean(prev_all)
    if learned_all:
        out["learned_drift_mean"] = _mean(learned_all)
    return out


@register("param_drift", "per module |theta_b - theta_a| / |theta_a| vs the previous phase end (q, k, v split)",
          "free")
def param_drift(ctx: ProbeContext) -> dict[str, float]:
    prev = ctx.model_at(ctx.prev_phase())
    if prev is None:
        return {}
    a, b = module_weights(prev), module_weights(ctx.model)
    out: dict[str, float] = {}
    num = den = 0.0
    for name, wa in a.items():
        diff = float((b[name].double() - wa.double()).norm() ** 2)
        base = float(wa.double().norm() ** 2)
        num, den = num + diff, den + base
        if base > 0:
            out[f"{name}/rel"] = (diff / base) ** 0.5
    rels = [v for v in out.values()]
    out["mean_rel"] = _mean(rels)
    out["total_rel"] = (num / den) ** 0.5 if den > 0 else float("nan")
    return out


@register("update_ratio", "per module |last AdamW update| / |weight|, rebuilt from the optimizer state and the "
          "learning rate of the last step (q, k, v split)", "free")
def update_ratio(ctx: ProbeContext) -> dict[str, float]:
    """u = lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + lr wd theta: PyTorch AdamW's last step."""
    if ctx.optim_state is None or ctx.phase_step < 1:
        return {}
    st, t = ctx.optim_state(), ctx.cfg.train
    spec = ctx.cfg.schedule[ctx.phase - 1]
    lr = lr_at(ctx.cfg, ctx.phase_step - 1, spec.steps, spec.lr)
    upd: dict[str, torch.Tensor] = {}
    weights: dict[str, torch.Tensor] = {}
    for name, p in trainable(ctx.model):
        if f"{name}.exp_avg" not in st:
            return {}  # not AdamW state: nothing to rebuild
        m, v = st[f"{name}.exp_avg"].to(p.device).double(), st[f"{name}.exp_avg_sq"].to(p.device).double()
        n = float(st[f"{name}.step"])
        theta = p.detach().double()
        u = lr * (m / (1 - t.beta1 ** n)) / ((v / (1 - t.beta2 ** n)).sqrt() + 1e-8)
        if p.dim() >= 2:
            u = u + lr * t.weight_decay * theta
        upd[name], weights[name] = u, theta
    u_mod, w_mod = module_split(ctx.model, upd), module_split(ctx.model, weights)
    out: dict[str, float] = {}
    num = den = 0.0
    for name, u in u_mod.items():
        wn = float(w_mod[name].norm())
        num, den = num + float(u.norm()) ** 2, den + wn ** 2
        if wn > 0:
            out[f"{name}/ratio"] = float(u.norm()) / wn
    out["total_ratio"] = (num / den) ** 0.5 if den > 0 else float("nan")
    out["lr"] = lr
    return out
