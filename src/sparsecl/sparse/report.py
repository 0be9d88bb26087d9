"""Topology report: degree statistics, dead units and spectral expansion of every layer's mask.

sigma_1 >= sigma_2 are the two largest singular values of the 0/1 mask. For a (d_r, d_c)-biregular
bipartite graph sigma_1 = sqrt(d_r d_c), and the Ramanujan bound on the second is
sqrt(d_r - 1) + sqrt(d_c - 1); we use the mean degrees for irregular masks. For the near-biregular
expander (degrees d or d+1) the mean degree is within one link of every node's, so the bound moves by less
than 1 / (2 sqrt(d - 1)) whichever degree one picks; for ER and BRF it is the bound of a biregular graph
with the same number of links. The spectral gap
1 - sigma_2 / sigma_1 is near 1 for good expanders and near 0 for banded (local) masks.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds

from sparsecl.config import SparseConfig
from sparsecl.sparse.apply import layer_masks, masked_layers
from sparsecl.sparse.backends import Choice, backend_name, explain_backend

if TYPE_CHECKING:
    from sparsecl.model.gpt import GPT

SVD_EXACT_MAX = 512  # below this min(out, in) take all singular values; above, two by Lanczos (ARPACK)


def top_two_singular_values(mask: torch.Tensor) -> tuple[float, float]:
    """The two largest singular values of a 0/1 matrix, exact for small ones, ARPACK for large ones."""
    if bool(mask.all()):  # a dense layer: rank one, no need to decompose a large all-ones matrix
        return math.sqrt(mask.numel()), 0.0
    m = mask.to(torch.float64)
    if min(m.shape) < 2:
        return float(torch.linalg.norm(m)), 0.0
    if min(m.shape) <= SVD_EXACT_MAX:
        s = torch.linalg.svdvals(m)
        return float(s[0]), float(s[1])
    idx = mask.nonzero().numpy()
    a = sp.csr_matrix((np.ones(len(idx)), (idx[:, 0], idx[:, 1])), shape=tuple(mask.shape))
    v0 = np.full(min(a.shape), 1.0 / math.sqrt(min(a.shape)))  # fixed start vector: deterministic report
    s = svds(a, k=2, return_singular_vectors=False, v0=v0, tol=1e-6)
    s = np.sort(s)[::-1]
    return float(s[0]), float(s[1])


def layer_report(name: str, mask: torch.Tensor, target_density: float | None = None) -> dict[str, Any]:
    """One row of the report for a boolean (out, in) mask."""
    mask = mask.bool().cpu()
    rows, cols = mask.sum(1).double(), mask.sum(0).double()
    s1, s2 = top_two_singular_values(mask)
    d_r, d_c = float(rows.mean()), float(cols.mean())
    bound = math.sqrt(max(d_r - 1, 0.0)) + math.sqrt(max(d_c - 1, 0.0))
    out: dict[str, Any] = {
        "name": name,
        "shape": list(mask.shape),
        "density": round(float(mask.double().mean()), 6),
        "nonzero": int(mask.sum()),
        "row_degree": {"min": int(rows.min()), "mean": round(d_r, 4), "max": int(rows.max())},
        "col_degree": {"min": int(cols.min()), "mean": round(d_c, 4), "max": int(cols.max())},
        "dead_rows": int((rows == 0).sum()),
        "dead_cols": int((cols == 0).sum()),
        "sigma1": round(s1, 6),
        "sigma2": round(s2, 6),
        "ramanujan_bound": round(bound, 6),
        "sigma2_over_bound": round(s2 / bound, 6) if bound > 0 else None,
        "spectral_gap": round(1.0 - s2 / s1, 6) if s1 > 0 else 0.0,
    }
    if target_density is not None:
        out["target_density"] = round(target_density, 6)
        out["density_deviation_pct"] = _deviation_pct(float(mask.double().mean()), target_density)
    return out


def _deviation_pct(realised: float, target: float) -> float:
    """(realised - target) / target in percent: how far a topology's feasible density is from the config's."""
    return round(100.0 * (realised - target) / target, 3) if target > 0 else 0.0


def model_masks(model: GPT, cfg: Any) -> dict[str, torch.Tensor]:
    """Layer name -> (out, in) bool mask of every masked projection (all-ones for dense layers)."""
    return layer_masks(model, cfg)


def model_backends(model: GPT, cfg: Any) -> dict[str, str]:
    """Layer name -> backend ('masked', 'csr', 'block', 'semi24'; 'dense' without a mask): what auto resolved to."""
    return {name: backend_name(mod) for name, (mod, _) in masked_layers(model, cfg).items()}


def model_backend_reasons(model: GPT, cfg: Any) -> dict[str, str]:
    """Layer name -> why its backend was chosen (set by ``swap_backend``)."""
    return {name: str(getattr(mod, "backend_reason", "")) for name, (mod, _) in masked_layers(model, cfg).items()}


def topology_report(masks: dict[str, torch.Tensor], cfg: Any, targets: dict[str, float] | None = None,
                    backends: dict[str, str] | None = None, reasons: dict[str, str] | None = None) -> dict[str, Any]:
    """The whole report: config, one row per layer (with its backend and why, when given), and totals."""
    layers = [layer_report(n, m, (targets or {}).get(n)) for n, m in masks.items()]
    for row in layers:
        if backends and row["name"] in backends:
            row["backend"] = backends[row["name"]]
        if reasons and row["name"] in reasons:
            row["backend_reason"] = reasons[row["name"]]
    total = sum(r["shape"][0] * r["shape"][1] for r in layers)
    nnz = sum(r["nonzero"] for r in layers)
    gaps = [r["spectral_gap"] for r in layers]
    rows = sum(r["shape"][0] for r in layers)
    density = nnz / total if total else 1.0
    return {
        "topology": "dense" if cfg.is_dense else cfg.topology,
        "allocation": cfg.allocation,
        "backend": cfg.backend,
        "target_density": cfg.density,
        "density": round(density, 6),
        "density_deviation_pct": _deviation_pct(density, cfg.density),
        "masked_params_total": total,
        "masked_params_nonzero": nnz,
        "dead_rows": sum(r["dead_rows"] for r in layers),
        "dead_cols": sum(r["dead_cols"] for r in layers),
        "dead_unit_fraction": round(sum(r["dead_rows"] for r in layers) / rows, 6) if rows else 0.0,
        "mean_spectral_gap": round(sum(gaps) / len(gaps), 6) if gaps else None,
        "layers": layers,
    }


def report_table(rep: dict[str, Any]) -> str:
    """Plain-text table of a report for the terminal."""
    head = (f"topology {rep['topology']}, allocation {rep['allocation']}, density {rep['density']:.4f} "
            f"(target {rep['target_density']}, deviation {rep['density_deviation_pct']:+.2f}%), nonzero "
            f"{rep['masked_params_nonzero']:,} of {rep['masked_params_total']:,}, dead rows {rep['dead_rows']} "
            f"({100 * rep['dead_unit_fraction']:.1f}% of output units), dead cols {rep['dead_cols']}")
    cols = f"{'layer':<24} {'shape':>11} {'density':>8} {'vs target':>9} {'row deg min/mean/max':>22} " \
           f"{'col deg min/mean/max':>22} {'dead r/c':>9} {'sigma2':>9} {'ramanujan':>9} {'s2/bound':>8} {'gap':>6}" \
           + (" backend" if any("backend" in r for r in rep["layers"]) else "")
    lines = [head, "", cols, "-" * len(cols)]
    for r in rep["layers"]:
        rd, cd = r["row_degree"], r["col_degree"]
        ratio = "-" if r["sigma2_over_bound"] is None else f"{r['sigma2_over_bound']:.3f}"
        dev = f"{r['density_deviation_pct']:+.2f}%" if "density_deviation_pct" in r else "-"
        lines.append(
            f"{r['name']:<24} {r['shape'][0]:>5}x{r['shape'][1]:<5} {r['density']:>8.4f} {dev:>9} "
            f"{rd['min']:>6}/{rd['mean']:>8.1f}/{rd['max']:<6} {cd['min']:>6}/{cd['mean']:>8.1f}/{cd['max']:<6} "
            f"{r['dead_rows']:>4}/{r['dead_cols']:<4} {r['sigma2']:>9.3f} {r['ramanujan_bound']:>9.3f} {ratio:>8} "
            f"{r['spectral_gap']:>6.3f}" + (f" {r['backend']}" if "backend" in r else ""))
    why: dict[tuple[str, str], int] = {}
    for r in rep["layers"]:
        if r.get("backend_reason"):
            key = (r["backend"], r["backend_reason"])
            why[key] = why.get(key, 0) + 1
    if why:
        lines += ["", "backends (sparse.backend=" + str(rep.get("backend", "?")) + "):"]
        lines += [f"  {b:<7} {n:>3} layer(s): {reason}" for (b, reason), n in why.items()]
    return "\n".join(lines)


def plan_backends(model: GPT, cfg: SparseConfig, masks: dict[str, torch.Tensor], device: torch.device,
                  tokens: int | None) -> dict[str, Choice]:
    """Layer name ('blocks.0.attn.q') -> the backend ``swap_backend`` would install and why, from drawn
    per-layer masks (no weights: works on a meta-device model). Fused layers decide on their whole mask."""
    out = {}
    groups: dict[str, list[str]] = {}
    for name in masks:
        groups.setdefault(name.rsplit(".", 1)[0], []).append(name)
    layers = masked_layers(model, cfg)
    for _mod_name, names in groups.items():
        mod = layers[names[0]][0]
        full = torch.ones(mod.out_features, mod.in_features, dtype=torch.bool)
        for n in names:
            full[layers[n][1]] = masks[n]
        if bool(full.all()):
            choice = Choice("dense", "no mask")
        else:
            choice = explain_backend(cfg.backend, full, device, tokens, cfg.block)
        out.update({n: choice for n in names})
    return out
