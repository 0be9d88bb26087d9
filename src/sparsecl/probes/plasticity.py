"""Plasticity: dormant units, weight and gradient norms, the plasticity probe, gradient interference,
gradient noise scale and the Fisher diagonal."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from sparsecl.config import FisherLabels, dump_yaml
from sparsecl.model.fisher import SeqGradStats, per_sequence_stats
from sparsecl.model.gpt import GPT, trainable
from sparsecl.probes import register
from sparsecl.probes.context import ProbeContext
from sparsecl.probes.linalg import (
    cosine,
    dormant_fraction,
    flat_mask,
    module_split,
    module_weights,
    redo_scores,
)
from sparsecl.rng import keyed_generator


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _split_flat(model: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """A flat vector over the trainable parameters, cut back into per-module pieces (q, k, v split)."""
    named, i = {}, 0
    for n, p in trainable(model):
        named[n] = flat[i:i + p.numel()].view_as(p)
        i += p.numel()
    return module_split(model, named)


@register("dormant", "fraction of MLP hidden units (after GELU) with ReDo score <= tau, over all domains' tokens",
          "1 forward per domain")
def dormant(ctx: ProbeContext) -> dict[str, float]:
    feats = [ctx.features(d) for d in ctx.windows]
    out: dict[str, float] = {}
    n_layers = len(feats[0].mlp)
    taus = ctx.cfg.probe.dormant_taus
    fracs: dict[float, list[float]] = {tau: [] for tau in taus}
    for lyr in range(n_layers):
        acts = torch.cat([f.mlp[lyr] for f in feats])
        scores = redo_scores(acts)  # once per layer, shared by the thresholds
        for tau in taus:
            fracs[tau].append(dormant_fraction(acts, tau, scores))
    for tau in taus:
        out.update({f"L{lyr}/tau{tau:g}": fr for lyr, fr in enumerate(fracs[tau])})
        out[f"tau{tau:g}"] = _mean(fracs[tau])  # layers have equal width, so this is the fraction of all units
    return out


@register("weight_grad_norm", "per module Frobenius norm of the weight (as used, masks applied) and of the gradient "
          "of the current phase's loss", "1 gradient per current domain")
def weight_grad_norm(ctx: ProbeContext) -> dict[str, float]:
    out: dict[str, float] = {}
    w = module_weights(ctx.model)
    g = _split_flat(ctx.model, ctx.grad(tuple(ctx.current)))
    for name, t in w.items():
        out[f"{name}/weight_norm"] = float(t.double().norm())
        out[f"{name}/grad_norm"] = float(g[name].double().norm())
    out["weight_norm_total"] = float(sum(float(t.double().norm() ** 2) for t in w.values()) ** 0.5)
    out["grad_norm_total"] = float(ctx.grad(tuple(ctx.current)).double().norm())
    return out


@register("interference", "cosine between the gradient of the new domains' loss and each old domain's loss "
          "(negative = conflicting updates)", "1 gradient per domain")
def interference(ctx: ProbeContext) -> dict[str, float]:
    if not ctx.old:
        return {}
    g_new = ctx.grad(tuple(ctx.current))
    out = {f"{d}/cos": cosine(g_new, ctx.grad((d,))) for d in ctx.old}
    vals = list(out.values())
    out["cos_mean"] = _mean(vals)
    out["cos_min"] = min(vals)
    return out


def _seq_stats(ctx: ProbeContext, labels: FisherLabels) -> SeqGradStats:
    """Per-sequence gradient sums on the current domains' mixed batch, shared by the noise scale and the Fisher."""
    key = ("seq_stats", labels)
    if key not in ctx.cache:
        x, y = ctx.mixed_batch(ctx.current, ctx.cfg.probe.noise_batch)
        if labels == "sampled":
            ctx.cache[key] = per_sequence_stats(ctx.model, x, None, ctx.generator("fisher_labels"))
        else:
            ctx.cache[key] = per_sequence_stats(ctx.model, x, y, None)
    return ctx.cache[key]


def noise_scale_from(stats: SeqGradStats) -> dict[str, float]:
    """B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018) with unbiased estimates from n per-sequence gradients:
    tr(Sigma) = (sum |g_i|^2 - n |g_bar|^2) / (n - 1), |G|^2 = |g_bar|^2 - tr(Sigma) / n."""
    n = stats.n
    assert stats.sum is not None
    gbar2 = float((stats.sum / n) @ (stats.sum / n))
    tr_sigma = (stats.sum_norm2 - n * gbar2) / (n - 1)
    g2 = gbar2 - tr_sigma / n
    out = {"trace_sigma": tr_sigma, "g2": g2, "g2_biased": gbar2, "sequences": float(n)}
    if g2 > 0:
        out["b_simple"] = tr_sigma / g2
    return out


@register("noise_scale", "gradient noise scale B_simple = tr(Sigma)/|G|^2 from per-sequence gradients (fp32), "
          "in sequences", "noise_batch gradients of one sequence")
def noise_scale(ctx: ProbeContext) -> dict[str, float]:
    return noise_scale_from(_seq_stats(ctx, "empirical"))


@register("fisher", "Fisher diagonal = mean of squared per-sequence gradients; keys say empirical (data labels) or "
          "sampled (labels sampled from the model)", "noise_batch gradients of one sequence")
def fisher(ctx: ProbeContext) -> dict[str, float]:
    labels: FisherLabels = "sampled" if ctx.cfg.probe.fisher_labels != "empirical" else "empirical"
    diag = _seq_stats(ctx, labels).fisher().float()
    mask = flat_mask(ctx.model, ctx.params())
    out: dict[str, float] = {}
    parts = _split_flat(ctx.model, diag)
    mparts = _split_flat(ctx.model, mask) if mask is not None else {}
    for name, t in parts.items():
        m = mparts.get(name)
        vals = t[m.bool()] if m is not None else t.reshape(-1)
        out[f"{labels}/{name}/mean"] = float(vals.double().mean()) if vals.numel() else 0.0
    exist = diag if mask is None else diag[mask.bool()]
    out[f"{labels}_trace"] = float(exist.double().sum())
    out[f"{labels}_mean"] = float(exist.double().mean())
    out[f"{labels}_max"] = float(exist.max())
    return out


def fresh_task_batch(seed: int, vocab: int, batch: int, block: int, *key: object
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The plasticity probe's fixed fresh task: uniform random tokens x, target perm(x) for a permutation drawn
    from the run's seed. Nothing in any domain resembles it, so it measures the ability to fit a new map."""
    perm = torch.randperm(vocab, generator=keyed_generator(seed, "plasticity-perm"))
    x = torch.randint(vocab, (batch, block), generator=keyed_generator(seed, "plasticity", *key))
    return x, perm[x]


def fit_fresh_task(model: GPT, seed: int, steps: int, lr: float, batch: int, betas: tuple[float, float],
                   device: torch.device) -> float:
    """Loss on a held-out batch of the fresh task after ``steps`` AdamW steps (fresh optimizer, constant lr, no
    weight decay, eval mode so no dropout) on a copy of ``model``; the original is untouched."""
    m = copy.deepcopy(model)
    m.eval()
    params = [p for _, p in trainable(m)]
    opt = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=0.0)
    V, T = m.cfg.vocab_size, m.cfg.block_size
    with torch.enable_grad():
        for k in range(steps):
            x, y = fresh_task_batch(seed, V, batch, T, "train", k)
            loss = m.loss(x.to(device), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    x, y = fresh_task_batch(seed, V, batch, T, "eval")
    with torch.no_grad():
        return float(m.loss(x.to(device), y.to(device)))


@register("plasticity", "loss after K steps on a fixed fresh task from a copy of the checkpoint, divided by the "
          "same from the run's random init (> 1 = less plastic than at init)",
          "plasticity_steps steps (from init: once per run)")
def plasticity(ctx: ProbeContext) -> dict[str, float]:
    pc, t = ctx.cfg.probe, ctx.cfg.train
    args = (ctx.cfg.seed, pc.plasticity_steps, pc.plasticity_lr, pc.plasticity_batch, (t.beta1, t.beta2), ctx.device)
    cur = fit_fresh_task(ctx.model, *args)
    key = f"{ctx.device}\n{dump_yaml(ctx.cfg)}"  # the init model and the fresh task follow from the config alone
    if key not in _FROM_INIT:
        _FROM_INIT[key] = fit_fresh_task(ctx.init_model(), *args)
    ref = _FROM_INIT[key]
    return {"ratio": cur / ref, "loss": cur, "loss_from_init": ref}


_FROM_INIT: dict[str, float] = {}
"""Loss from the run's init on the fresh task, per (device, config): the same at every phase, so computed once
per process (half the probe's cost); a resumed process recomputes the same number."""
