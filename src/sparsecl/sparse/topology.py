"""Mask generators: one function per topology, all drawing from a caller-supplied generator.

Every function has the signature ``fn(out_features, in_features, density, gen, cfg) -> BoolTensor``
of shape (out, in). They never touch the global RNG, so a mask depends only on (seed, layer name).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sparsecl.config import SparseConfig

MaskFn = Callable[[int, int, float, torch.Generator, "SparseConfig"], torch.Tensor]
TOPOLOGIES: dict[str, MaskFn] = {}


def register(name: str) -> Callable[[MaskFn], MaskFn]:
    def deco(fn: MaskFn) -> MaskFn:
        TOPOLOGIES[name] = fn
        return fn

    return deco


def layer_generator(seed: int, layer_name: str) -> torch.Generator:
    """A CPU generator seeded by a stable hash of (seed, layer name): same mask in every process."""
    digest = hashlib.sha256(f"{seed}/{layer_name}".encode()).digest()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def n_kept(out_features: int, in_features: int, density: float) -> int:
    return max(1, min(out_features * in_features, round(density * out_features * in_features)))


@register("dense")
def dense(out_features: int, in_features: int, density: float, gen: torch.Generator, cfg: SparseConfig
          ) -> torch.Tensor:
    return torch.ones(out_features, in_features, dtype=torch.bool)


@register("er")
def erdos_renyi(out_features: int, in_features: int, density: float, gen: torch.Generator,
                cfg: SparseConfig) -> torch.Tensor:
    """Exactly round(rho * out * in) connections, placed uniformly at random."""
    k = n_kept(out_features, in_features, density)
    idx = torch.randperm(out_features * in_features, generator=gen)[:k]
    mask = torch.zeros(out_features * in_features, dtype=torch.bool)
    mask[idx] = True
    return mask.view(out_features, in_features)


def make_mask(topology: str, out_features: int, in_features: int, density: float, seed: int,
              layer_name: str, cfg: SparseConfig) -> torch.Tensor:
    if density >= 1.0:
        return torch.ones(out_features, in_features, dtype=torch.bool)
    gen = layer_generator(seed, layer_name)
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
    The total number of links is round(rho * out * in), as for ER.
    """
    transpose = out_features > in_features
    n_small, n_large = (in_features, out_features) if transpose else (out_features, in_features)
    total = n_kept(out_features, in_features, density)
    if cfg.brf_degree == "fixed":
        base, extra = divmod(total, n_small)
        deg = torch.full((n_small,), base, dtype=torch.long)
        deg[torch.randperm(n_small, generator=gen)[:extra]] += 1
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
    return mask.t().contiguous() if transpose else mask


def biregular_degrees(out_features: int, in_features: int, density: float) -> tuple[int, int]:
    """The feasible (row degree, column degree) nearest to the target density.

    A biregular (out, in) mask needs d_r * out = d_c * in, so the link count is a multiple of
    lcm(out, in) and the density a multiple of 1 / gcd(out, in); we take the nearest such density
    (at least one link per row). E.g. 1024x1024 allows any d_r, 4096x1024 any d_r with d_c = 4 d_r.
    """
    g = math.gcd(out_features, in_features)
    m = min(g, max(1, round(density * g)))
    return m * in_features // g, m * out_features // g


@register("expander")
def biregular_expander(out_features: int, in_features: int, density: float, gen: torch.Generator,
                       cfg: SparseConfig) -> torch.Tensor:
    """Random biregular bipartite graph: every row exactly d_r links, every column exactly d_c.

    Start from a structured biregular graph (row i links columns i*d_r .. i*d_r+d_r-1 mod in) and
    randomise it by degree-preserving double-edge swaps (a,b),(c,d) -> (a,d),(c,b), run in vectorised
    rounds: every round pairs all edges at random and accepts every swap that creates two links not yet
    present (and not proposed twice in the round). Swaps keep both degree sequences exact.
    """
    d_r, d_c = biregular_degrees(out_features, in_features, density)
    n_in = in_features
    rows = torch.arange(out_features).repeat_interleave(d_r)
    cols = (rows * d_r + torch.arange(d_r).repeat(out_features)) % n_in
    present = torch.zeros(out_features * n_in, dtype=torch.bool)
    present[rows * n_in + cols] = True
    n_edges = rows.numel()
    if n_edges < 2 or d_r == n_in:
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


@register("nm")
def n_of_m(out_features: int, in_features: int, density: float, gen: torch.Generator, cfg: SparseConfig
           ) -> torch.Tensor:
    """N:M along the input dimension: in every row, each group of M consecutive inputs keeps exactly N,
    chosen at random. Its density is N/M by construction; the config requires sparse.density = N/M
    (uniform allocation), so the density named in the config is the density the layers get.
    """
    n, m = cfg.nm_n, cfg.nm_m
    if in_features % m:
        from sparsecl.errors import ConfigError

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
