"""Mask generators: one function per topology, all drawing from a caller-supplied generator.

Every function has the signature ``fn(out_features, in_features, density, gen, cfg) -> BoolTensor``
of shape (out, in). They never touch the global RNG, so a mask depends only on (seed, layer name).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from sparsecl.config.sections import MIN_DEGREE_TOPOLOGIES
from sparsecl.errors import ConfigError
from sparsecl.rng import keyed_generator

if TYPE_CHECKING:
    from sparsecl.config import SparseConfig

MaskFn = Callable[[int, int, float, torch.Generator, "SparseConfig"], torch.Tensor]
TOPOLOGIES: dict[str, MaskFn] = {}


def register(name: str) -> Callable[[MaskFn], MaskFn]:
    def deco(fn: MaskFn) -> MaskFn:
        TOPOLOGIES[name] = fn
        return fn

    return deco


def n_kept(out_features: int, in_features: int, density: float) -> int:
    return max(1, min(out_features * in_features, round(density * out_features * in_features)))


@register("dense")
def dense(out_features: int, in_features: int, density: float, gen: torch.Generator, cfg: SparseConfig
          ) -> torch.Tensor:
    return torch.ones(out_features, in_features, dtype=torch.bool)


def check_min_degree(out_features: int, in_features: int, total: int, k: int, layer_name: str) -> None:
    """Every row and column keeping k links needs k * max(out, in) <= the layer's link count."""
    need = k * max(out_features, in_features)
    if need > total:
        raise ConfigError("sparse.min_degree", f"{k} needs at least {need} links in layer {layer_name} "
                          f"({out_features}x{in_features}) but its density keeps {total}",
                          f"lower sparse.min_degree to {total // max(out_features, in_features)} or raise "
                          "sparse.density")


@register("er")
def erdos_renyi(out_features: int, in_features: int, density: float, gen: torch.Generator,
                cfg: SparseConfig) -> torch.Tensor:
    """Exactly round(rho * out * in) connections, placed uniformly at random.

    With ``sparse.min_degree`` k > 0 the guaranteed links come first (a random near-biregular graph with
    k * max(out, in) links, so every row and column has >= k), and the rest fill the remaining cells
    uniformly at random.
    """
    k = n_kept(out_features, in_features, density)
    if cfg.min_degree > 0:
        base = near_biregular(out_features, in_features, cfg.min_degree * max(out_features, in_features), gen)
        free = (~base).view(-1).nonzero().squeeze(1)
        pick = free[torch.randperm(free.numel(), generator=gen)[:k - int(base.sum())]]
        base.view(-1)[pick] = True
        return base
    idx = torch.randperm(out_features * in_features, generator=gen)[:k]
    mask = torch.zeros(out_features * in_features, dtype=torch.bool)
    mask[idx] = True
    return mask.view(out_features, in_features)


def kept_count(out_features: int, in_features: int, density: float, cfg: SparseConfig) -> int:
    """Links a layer of this shape keeps: exact for every topology but block (within one block of it)."""
    if density >= 1.0:
        return out_features * in_features
    if cfg.topology == "expander" and cfg.expander_degree == "exact":
        return biregular_degrees(out_features, in_features, density)[0] * out_features
    if cfg.topology == "nm":
        return out_features * in_features * cfg.nm_n // cfg.nm_m
    return n_kept(out_features, in_features, density)


def make_mask(topology: str, out_features: int, in_features: int, density: float, seed: int,
              layer_name: str, cfg: SparseConfig) -> torch.Tensor:
    if density >= 1.0:
        return torch.ones(out_features, in_features, dtype=torch.bool)
    if cfg.min_degree > 0 and topology in MIN_DEGREE_TOPOLOGIES:
        check_min_degree(out_features, in_features, kept_count(out_features, in_features, density, cfg),
                         cfg.min_degree, layer_name)
    gen = keyed_generator(seed, layer_name)
    return TOPOLOGIES[topology](out_features, in_features, density, gen, cfg)


def _ring_band_keys(n_small: int, n_large: int, r: float, rows: torch.Tensor, gen: torch.Generator
                    ) -> torch.Tensor:
    """Sampling keys for BRF: top-k of these keys draws k links without replacement with probability
    proportional to (1 + ring distance)^(-(1-r)/r) (Gumbel-top-k trick, Kool et al. 2019).

    r = 0 is the limit of an infinitely steep kernel: the k nearest nodes on the ring (a band); ties
    between the two sides of a centre are broken at random.
    """
    stride = n_large // n_small
    centre = rows * stride  # (R,)
    pos = torch.arange(n_large)
    diff = (pos[None, :] - centre[:, None]).abs()
    dist = torch.minimum(diff, n_large - diff).to(torch.float64)  # (R, L) ring distance
    u = torch.rand(dist.shape, generator=gen, dtype=torch.float64).clamp_(1e-300, 1.0)
    if r == 0.0:
        return -dist + 0.5 * u  # the jitter (< 1) only breaks ties between equal distances
    alpha = (1.0 - r) / r
    gumbel = -torch.log((-torch.log(u)).clamp(min=1e-300))
    return -alpha * torch.log1p(dist) + gumbel


@register("brf")
def bipartite_receptive_field(out_features: int, in_features: int, density: float, gen: torch.Generator,
                              cfg: SparseConfig) -> torch.Tensor:
    """Bipartite receptive field (Cannistraci-Hebb training; DESIGN §6).

    Each node of the smaller side gets a centre on a ring over the larger side (stride n_large // n_small)
    and draws its links without replacement with probability proportional to (1 + ring distance)^(-(1-r)/r):
    r = 0 is a band of the k nearest nodes, r = 1 is uniform random. The smaller side's degrees are
    'fixed' (floor(k) or floor(k)+1, the +1s on random nodes) or 'random' (the row counts of a uniform
    random placement of the same number of links, i.e. exactly ER's degree distribution).
    The total number of links is round(rho * out * in), as for ER. With ``sparse.min_degree`` k > 0 every
    smaller-side node gets >= k links ('random' places k per node first, the rest uniformly) and the
    larger side is covered afterwards by ``_cover_large_side``.
    """
    transpose = out_features > in_features
    n_small, n_large = (in_features, out_features) if transpose else (out_features, in_features)
    total = n_kept(out_features, in_features, density)
    k = cfg.min_degree
    if cfg.brf_degree == "fixed":
        base, extra = divmod(total, n_small)
        deg = torch.full((n_small,), base, dtype=torch.long)
        deg[torch.randperm(n_small, generator=gen)[:extra]] += 1
    elif k > 0:  # k guaranteed links per node, the rest placed uniformly over the remaining cells
        cells = torch.randperm(n_small * (n_large - k), generator=gen)[:total - k * n_small]
        deg = k + torch.bincount(cells // (n_large - k), minlength=n_small)
    else:
        cells = torch.randperm(n_small * n_large, generator=gen)[:total]
        deg = torch.bincount(cells // n_large, minlength=n_small)
    mask = torch.zeros(n_small, n_large, dtype=torch.bool)
    chunk = max(1, (1 << 22) // n_large)  # bound the (rows, n_large) key matrix to ~32 MB
    for start in range(0, n_small, chunk):
        rows = torch.arange(start, min(n_small, start + chunk))
        keys = _ring_band_keys(n_small, n_large, cfg.brf_r, rows, gen)
        kmax = int(deg[rows].max())
        if kmax == 0:
            continue
        top = keys.topk(kmax, dim=1).indices  # (R, kmax), best first
        keep = torch.arange(kmax)[None, :] < deg[rows][:, None]
        mask[rows[:, None].expand_as(top)[keep], top[keep]] = True
    if k > 0:
        _cover_large_side(mask, k)
    return mask.t().contiguous() if transpose else mask


def _cover_large_side(mask: torch.Tensor, k: int) -> None:
    """Give every larger-side node (column of the (n_small, n_large) mask) at least k links, in place.

    A node short of links takes one from the small-side node whose ring centre is nearest to it (the
    link the BRF kernel favours most) among those not yet linked to it; that node gives up its link farthest
    from its centre among the large-side nodes that have more than k. Small-side degrees and the total are
    unchanged. A donor always exists when k * n_large <= links: a node with more than k links has a
    neighbour not linked to the short node, or the short node would have as many links.
    """
    n_small, n_large = mask.shape
    stride = n_large // n_small
    pos = torch.arange(n_large)
    diff = (pos[None, :] - (torch.arange(n_small) * stride)[:, None]).abs()
    dist = torch.minimum(diff, n_large - diff)  # (n_small, n_large) ring distance from each centre
    col_deg = mask.sum(0)
    for v in (col_deg < k).nonzero().squeeze(1).tolist():
        while int(col_deg[v]) < k:
            rich = col_deg > k  # large-side nodes that can spare a link
            can_give = (mask & rich[None, :]).any(1) & ~mask[:, v]
            u = int(torch.where(can_give, dist[:, v], n_large + 1).argmin())
            w = int(torch.where(mask[u] & rich, dist[u], -1).argmax())
            mask[u, w], mask[u, v] = False, True
            col_deg[w] -= 1
            col_deg[v] += 1


def biregular_degrees(out_features: int, in_features: int, density: float) -> tuple[int, int]:
    """The feasible (row degree, column degree) nearest to the target density.

    A biregular (out, in) mask needs d_r * out = d_c * in, so the link count is a multiple of
    lcm(out, in) and the density a multiple of 1 / gcd(out, in); we take the nearest such density
    (at least one link per row). E.g. 1024x1024 allows any d_r, 4096x1024 any d_r with d_c = 4 d_r.
    """
    g = math.gcd(out_features, in_features)
    m = min(g, max(1, round(density * g)))
    return m * in_features // g, m * out_features // g


def near_biregular(out_features: int, in_features: int, n_edges: int, gen: torch.Generator) -> torch.Tensor:
    """A random (out, in) mask with exactly ``n_edges`` links, row degrees in {floor, ceil}(E / out) and
    column degrees in {floor, ceil}(E / in): biregular whenever E is a multiple of both sides.

    Start from a structured graph (edge e joins row r(e), rows taking consecutive edges, to column
    perm[e mod in]; the rows and columns that carry the +1 are random), then randomise it by
    degree-preserving double-edge swaps (a,b),(c,d) -> (a,d),(c,b) in vectorised rounds: every round pairs
    all edges at random and accepts every swap that creates two links not yet present (and not proposed
    twice in the round). Swaps keep both degree sequences exact. Near-uniform degree sequences are always
    realisable (Gale-Ryser), so every count from 1 to out * in is reachable.
    """
    n_in = in_features
    base, extra = divmod(n_edges, out_features)
    deg = torch.full((out_features,), base, dtype=torch.long)
    col_of = torch.arange(n_in)
    if extra or n_edges % n_in:  # near-biregular: random rows get +1 links, random columns the extra stubs
        deg[torch.randperm(out_features, generator=gen)[:extra]] += 1
        col_of = torch.randperm(n_in, generator=gen)
    rows = torch.arange(out_features).repeat_interleave(deg)
    cols = col_of[torch.arange(n_edges) % n_in]  # a row's <= in consecutive edges hit distinct columns
    present = torch.zeros(out_features * n_in, dtype=torch.bool)
    present[rows * n_in + cols] = True
    if n_edges < 2 or n_edges == out_features * n_in:
        return present.view(out_features, n_in)
    rounds = 2 * math.ceil(math.log2(n_edges)) + 8
    seen = torch.zeros(out_features * n_in, dtype=torch.int32)  # scratch counter, reset after every round
    for _ in range(rounds):
        perm = torch.randperm(n_edges - n_edges % 2, generator=gen).view(-1, 2)
        a, b = perm[:, 0], perm[:, 1]
        ra, ca, rb, cb = rows[a], cols[a], rows[b], cols[b]
        new1, new2 = ra * n_in + cb, rb * n_in + ca
        idx = ((ra != rb) & (ca != cb) & ~present[new1] & ~present[new2]).nonzero().squeeze(1)
        n1, n2 = new1[idx], new2[idx]
        keys = torch.cat([n1, n2])
        seen.index_put_((keys,), torch.ones_like(keys, dtype=torch.int32), accumulate=True)
        good = (seen[n1] == 1) & (seen[n2] == 1)  # a new link proposed twice in a round: drop both swaps
        seen[keys] = 0
        idx, n1, n2 = idx[good], n1[good], n2[good]
        present[ra[idx] * n_in + ca[idx]] = False
        present[rb[idx] * n_in + cb[idx]] = False
        present[n1] = True
        present[n2] = True
        cols[a[idx]], cols[b[idx]] = cb[idx], ca[idx]
    return present.view(out_features, n_in)


@register("expander")
def biregular_expander(out_features: int, in_features: int, density: float, gen: torch.Generator,
                       cfg: SparseConfig) -> torch.Tensor:
    """Random (near-)biregular bipartite graph, randomised by degree-preserving swaps (``near_biregular``).

    ``sparse.expander_degree=near`` (default) keeps exactly round(rho * out * in) links, like ER and BRF, with
    row degrees d or d+1 and column degrees c or c+1. ``exact`` makes every row exactly d_r and every
    column exactly d_c, which moves the density to the nearest multiple of 1 / gcd(out, in)
    (``biregular_degrees``): 4.69% instead of 5% for 128-wide layers.
    """
    if cfg.expander_degree == "exact":
        n_edges = biregular_degrees(out_features, in_features, density)[0] * out_features
    else:
        n_edges = n_kept(out_features, in_features, density)
    return near_biregular(out_features, in_features, n_edges, gen)


@register("nm")
def n_of_m(out_features: int, in_features: int, density: float, gen: torch.Generator, cfg: SparseConfig
           ) -> torch.Tensor:
    """N:M along the input dimension: in every row, each group of M consecutive inputs keeps exactly N,
    chosen at random. Its density is N/M by construction; the config requires sparse.density = N/M
    (uniform allocation), so the density named in the config is the density the layers get.
    """
    n, m = cfg.nm_n, cfg.nm_m
    if in_features % m:
        raise ConfigError("sparse.nm_m", f"{m} does not divide the layer input width {in_features}",
                          "pick nm_m dividing d_model and d_ff")
    groups = out_features * in_features // m
    keys = torch.rand(groups, m, generator=gen)
    mask = torch.zeros(groups, m, dtype=torch.bool)
    mask.scatter_(1, keys.topk(n, dim=1).indices, True)
    return mask.view(out_features, in_features)


@register("block")
def random_blocks(out_features: int, in_features: int, density: float, gen: torch.Generator, cfg: SparseConfig
                  ) -> torch.Tensor:
    """Whole b x b blocks (b = sparse.block) kept at random, as many as bring the kept count closest to
    round(rho * out * in) (at least one block). Blocks on the right and bottom edges may be partial when b
    does not divide the width, so the density is exact within one block: b*b / (out*in).
    """
    b = cfg.block
    nbr, nbc = -(-out_features // b), -(-in_features // b)
    heights = torch.full((nbr,), b)
    heights[-1] = out_features - b * (nbr - 1)
    widths = torch.full((nbc,), b)
    widths[-1] = in_features - b * (nbc - 1)
    order = torch.randperm(nbr * nbc, generator=gen)
    sizes = (heights[order // nbc] * widths[order % nbc]).cumsum(0)
    target = n_kept(out_features, in_features, density)
    n_blocks = int((sizes - target).abs().argmin()) + 1
    chosen = torch.zeros(nbr * nbc, dtype=torch.bool)
    chosen[order[:n_blocks]] = True
    grid = chosen.view(nbr, nbc)
    return grid.repeat_interleave(heights, 0).repeat_interleave(widths, 1)
