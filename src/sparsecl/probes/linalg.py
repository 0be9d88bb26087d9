"""Numerical helpers of the probes: weight access, flat parameter vectors, CKA, effective rank, principal
angles, Lanczos, Hutchinson. Pure functions of tensors where possible, so tests can check them exactly.

Weights are read only through ``effective_weight`` and masks only through ``param_masks`` (model.gpt), so another
sparse backend (e.g. one storing only the kept values) needs changes in these two places only.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn as nn

from sparsecl.model.gpt import maskable_layers, param_masks, trainable


# ---------------------------------------------------------------------------------------------- weight access
def effective_weight(module: nn.Module) -> torch.Tensor:
    """The dense weight the module computes with: W * M for a masked layer, W otherwise."""
    dense = getattr(module, "dense_weight", None)
    if callable(dense):  # a backend that stores values only exposes its dense matrix this way
        return dense()
    w = cast(torch.Tensor, module.weight)
    mask = getattr(module, "mask", None)
    return w if mask is None else w * mask


def flat_mask(model: nn.Module, params: list[nn.Parameter]) -> torch.Tensor | None:
    """A 0/1 vector over the flattened parameters (1 = the weight exists); None for a dense model."""
    masks = param_masks(model)
    if not any(id(p) in masks for p in params):
        return None
    parts = [masks[id(p)].reshape(-1).to(p.dtype) if id(p) in masks else torch.ones(p.numel(), dtype=p.dtype,
                                                                                       device=p.device)
             for p in params]
    return torch.cat(parts)


def flatten(tensors: list[torch.Tensor | None], params: list[nn.Parameter]) -> torch.Tensor:
    """Concatenate gradients (None -> zeros) into one vector aligned with ``params``."""
    return torch.cat([(torch.zeros_like(p) if t is None else t).reshape(-1) for t, p in zip(tensors, params,
                                                                                            strict=True)])


def module_split(model: nn.Module, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-module pieces of per-parameter tensors: fused weights split into their parts (q, k, v), named like
    the sparse layers ('blocks.0.attn.qkv.q'); other parameters keep their parameter name."""
    out: dict[str, torch.Tensor] = {}
    fused = {f"{n}.weight": m for n, m in maskable_layers(model).items()}
    for name, t in named.items():
        mod = fused.get(name)
        if mod is None:
            out[name] = t
            continue
        base = name[: -len(".weight")]
        for part, rows in mod.part_rows():
            out[f"{base}.{part}"] = t[rows]
    return out


def module_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight as the model uses it (masks applied), split per module part."""
    named: dict[str, torch.Tensor] = {}
    maskable = maskable_layers(model)
    for n, p in trainable(model):
        mod = maskable.get(n[: -len(".weight")]) if n.endswith(".weight") else None
        named[n] = effective_weight(mod) if mod is not None else p
    return module_split(model, {k: v.detach() for k, v in named.items()})


# ---------------------------------------------------------------------------------------------- representations
def _centred(x: torch.Tensor) -> torch.Tensor:
    return x.double() - x.double().mean(0, keepdim=True)


def centred_gram_norm(x: torch.Tensor) -> torch.Tensor:
    """||X^T X||_F of the column-centred X (float64): linear CKA's normaliser of one representation."""
    xc = _centred(x)
    return torch.linalg.matrix_norm(xc.T @ xc)


def linear_cka(x: torch.Tensor, y: torch.Tensor, x_norm: torch.Tensor | None = None,
               y_norm: torch.Tensor | None = None) -> float:
    """Linear CKA (Kornblith et al. 2019): ||X^T Y||_F^2 / (||X^T X||_F ||Y^T Y||_F), columns centred.

    ``x_norm``/``y_norm``: ``centred_gram_norm`` of x/y if already known (a representation compared with several
    others), bitwise the value computed here otherwise."""
    xc, yc = _centred(x), _centred(y)
    num = torch.linalg.matrix_norm(xc.T @ yc) ** 2
    nx = torch.linalg.matrix_norm(xc.T @ xc) if x_norm is None else x_norm
    ny = torch.linalg.matrix_norm(yc.T @ yc) if y_norm is None else y_norm
    den = nx * ny
    return float(num / den) if den > 0 else float("nan")


def effective_rank(x: torch.Tensor, centred: bool = False) -> float:
    """exp(entropy of the normalised singular values) (Roy & Vetterli 2007), of an (N, d) feature matrix."""
    x = x.double()
    if centred:
        x = x - x.mean(0, keepdim=True)
    # Singular values from the d x d Gram matrix: a tall SVD was ~20x slower here. Eigenvalues below 1e-12 of
    # the largest (singular values below 1e-6 of the largest) are rounding noise of exact zeros and are dropped.
    ev = torch.linalg.eigvalsh(x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T)
    ev = ev[ev > ev.max() * 1e-12]
    s = ev.sqrt()
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def update_digest(h: Any, t: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape and bytes to a hashlib object."""
    t = t.detach()
    h.update(f"{t.dtype}{tuple(t.shape)}{t.device}".encode())
    h.update(t.reshape(-1).contiguous().view(torch.uint8).cpu().numpy())


def tensor_digest(*ts: torch.Tensor | None) -> str:
    """A content hash of tensors: equal digests mean bitwise equal inputs."""
    h = hashlib.blake2b(digest_size=16)
    for t in ts:
        if t is None:
            h.update(b"none")
        else:
            update_digest(h, t)
    return h.hexdigest()


_SUBSPACES: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()
_SUBSPACES_MAX = 1024
"""Top-k subspaces by content of their inputs: the previous phase end's weights at a probe point are bitwise the
current weights of the point before, whose subspaces were computed there (half the rotation probe's work)."""


def top_left_singular_cached(a: torch.Tensor, k: int, right: torch.Tensor | None = None) -> torch.Tensor:
    """``top_left_singular`` remembered by the content of its inputs (LRU over the last 1024 inputs): exact."""
    key = (tensor_digest(a, right), k)
    if key in _SUBSPACES:
        _SUBSPACES.move_to_end(key)
        return _SUBSPACES[key]
    u = top_left_singular(a, k, right)
    _SUBSPACES[key] = u
    if len(_SUBSPACES) > _SUBSPACES_MAX:
        _SUBSPACES.popitem(last=False)
    return u


def top_left_singular(a: torch.Tensor, k: int, right: torch.Tensor | None = None) -> torch.Tensor:
    """Orthonormal (m, k) basis of the top-k left singular subspace of ``a``, or of ``a @ right`` unformed.

    Through a symmetric eigensolver on the Gram matrix of the narrow side, in float64: one dense SVD per matrix
    took ~60 s per phase for a 100M model on an H100 (its 336 per-head circuits are 768 x 768 each); a product
    of rank D goes through a thin QR and a D x D problem instead. Top singular directions are well resolved by
    the Gram route in float64; the subspace is only defined where the k-th and (k+1)-th values differ anyway.
    """
    a = a.double()
    if right is not None:
        q, r = torch.linalg.qr(a)  # a = q r with q (m, d) orthonormal: a @ right = q (r @ right)
        return q @ top_left_singular(r @ right.double(), k)
    m, n = a.shape
    k = min(k, m, n)
    if m <= n:
        return torch.linalg.eigh(a @ a.T)[1][:, -k:].flip(1)
    v = torch.linalg.eigh(a.T @ a)[1][:, -k:].flip(1)
    return torch.linalg.qr(a @ v)[0]  # a v_i = s_i u_i: normalising the columns gives u_i


def principal_angles_deg(a: torch.Tensor, b: torch.Tensor, k: int, a_right: torch.Tensor | None = None,
                         b_right: torch.Tensor | None = None) -> torch.Tensor:
    """Principal angles (degrees, ascending) between the top-k left singular subspaces of a and b
    (of ``a @ a_right`` and ``b @ b_right`` when the right factors are given)."""
    ua, ub = top_left_singular_cached(a, k, a_right), top_left_singular_cached(b, k, b_right)
    cos = torch.linalg.svdvals(ua.T @ ub).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos)).flip(0)


def redo_scores(acts: torch.Tensor) -> torch.Tensor | None:
    """ReDo (Sokar et al. 2023) unit scores s_i = E|h_i| / mean_j E|h_j| of (N tokens, units) activations after
    the nonlinearity; None when every unit is silent."""
    m = acts.double().abs().mean(0)
    mean = m.mean()
    return None if mean <= 0 else m / mean


def dormant_fraction(acts: torch.Tensor, tau: float, scores: torch.Tensor | None = None) -> float:
    """Fraction of units with ReDo score s_i <= tau. ``scores`` (from ``redo_scores(acts)``) saves recomputing
    them for several thresholds."""
    s = redo_scores(acts) if scores is None else scores
    if s is None:
        return 1.0
    return float((s <= tau).double().mean())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = a.double().norm(), b.double().norm()
    if na == 0 or nb == 0:
        return float("nan")
    return float(a.double() @ b.double() / (na * nb))


# ---------------------------------------------------------------------------------------------- curvature
def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, steps: int
            ) -> torch.Tensor:
    """Ritz values (ascending, float64) of a symmetric operator after ``steps`` Lanczos iterations.

    Full reorthogonalisation (twice, against every earlier vector) keeps the basis orthogonal in float32;
    the tridiagonal T goes to a symmetric eigensolver. Stops early on an invariant subspace.
    """
    n = start.numel()
    steps = min(steps, n)
    v = start / start.norm()
    basis = [v]
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(steps):
        w = matvec(basis[j])
        a = float(w @ basis[j])
        alphas.append(a)
        if j == steps - 1:
            break
        w = w - a * basis[j] - (betas[-1] * basis[j - 1] if j > 0 else 0.0)
        V = torch.stack(basis)  # (j+1, n)
        for _ in range(2):
            w = w - V.T @ (V @ w)
        b = float(w.norm())
        scale = max(abs(x) for x in alphas) or 1.0
        if b <= 1e-7 * scale:
            break
        betas.append(b)
        basis.append(w / b)
    m = len(alphas)
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(betas[: m - 1], dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigvalsh(T)


def hutchinson(matvec: Callable[[torch.Tensor], torch.Tensor], n: int, samples: int, gen: torch.Generator,
               mask: torch.Tensor | None, device: torch.device, dtype: torch.dtype) -> tuple[float, float, list[float]]:
    """Trace estimate z^T A z over ``samples`` Rademacher z (restricted to the mask): mean, standard error, all."""
    est = []
    for _ in range(samples):
        z = (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).to(device=device, dtype=dtype)
        if mask is not None:
            z = z * mask
        est.append(float(z @ matvec(z)))
    t = torch.tensor(est, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=True) / math.sqrt(samples)), est
