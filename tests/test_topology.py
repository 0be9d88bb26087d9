"""Topologies, allocation and the topology report: densities, degrees, bands and determinism."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsecl.config import ConfigError, SparseConfig
from sparsecl.sparse.allocation import erk
from sparsecl.sparse.report import layer_report, top_two_singular_values
from sparsecl.sparse.topology import TOPOLOGIES, biregular_degrees, make_mask, n_kept

torch.set_num_threads(1)

SHAPES = [(64, 64), (96, 32), (32, 160), (128, 512)]


def cfg_for(topology: str, density: float, **kw: object) -> SparseConfig:
    return SparseConfig(density=density, topology=topology, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", [0.05, 0.1, 0.3])
def test_every_topology_hits_its_density(shape: tuple[int, int], density: float) -> None:
    out_f, in_f = shape
    target = n_kept(out_f, in_f, density)
    for topo in ["er", "brf"]:
        for degree in ["fixed", "random"]:
            m = make_mask(topo, out_f, in_f, density, 3, "l", cfg_for(topo, density, brf_degree=degree))
            assert m.shape == shape and m.dtype == torch.bool
            assert int(m.sum()) == target, (topo, degree)
    m = make_mask("expander", out_f, in_f, density, 3, "l", cfg_for("expander", density))
    assert int(m.sum()) == target  # near-biregular (default): the exact count, like ER and BRF
    m = make_mask("expander", out_f, in_f, density, 3, "l", cfg_for("expander", density, expander_degree="exact"))
    g = math.gcd(out_f, in_f)
    assert abs(m.double().mean().item() - density) <= 0.5 / g + 1e-12  # nearest feasible biregular density
    b = 8
    m = make_mask("block", out_f, in_f, density, 3, "l", cfg_for("block", density, block=b))
    assert abs(int(m.sum()) - target) <= b * b / 2  # within half a block (all shapes here are multiples of 8)
    m = make_mask("nm", out_f, in_f, 0.5, 3, "l", cfg_for("nm", 0.5, nm_n=2, nm_m=4))
    assert m.double().mean().item() == 0.5
    assert torch.equal(m.view(out_f, in_f // 4, 4).sum(-1), torch.full((out_f, in_f // 4), 2))


def test_block_topology_is_made_of_whole_blocks() -> None:
    m = make_mask("block", 64, 96, 0.2, 0, "l", cfg_for("block", 0.2, block=16))
    tiles = m.view(4, 16, 6, 16).permute(0, 2, 1, 3).reshape(24, 256)
    sums = tiles.sum(1)
    assert bool(((sums == 0) | (sums == 256)).all())
    assert int((sums == 256).sum()) == round(0.2 * 24)


@pytest.mark.parametrize("shape", [(64, 64), (256, 64), (64, 192), (120, 80)])
def test_expander_degrees_are_exact_and_randomised(shape: tuple[int, int]) -> None:
    out_f, in_f = shape
    d_r, d_c = biregular_degrees(out_f, in_f, 0.1)
    assert d_r * out_f == d_c * in_f
    m = make_mask("expander", out_f, in_f, 0.1, 0, "l", cfg_for("expander", 0.1, expander_degree="exact"))
    assert bool((m.sum(1) == d_r).all()) and bool((m.sum(0) == d_c).all())
    start = torch.zeros(in_f, dtype=torch.bool)
    start[torch.arange(d_r) % in_f] = True
    assert not torch.equal(m[0], start)  # the structured start was shuffled
    rep = layer_report("x", m)
    assert rep["sigma1"] == pytest.approx(math.sqrt(d_r * d_c), rel=1e-6)
    assert rep["sigma2_over_bound"] < 1.1  # near-Ramanujan, as random biregular graphs are


def test_expander_feasible_degrees_are_nearest() -> None:
    assert biregular_degrees(1024, 1024, 0.1) == (102, 102)
    assert biregular_degrees(4096, 1024, 0.05) == (51, 204)
    assert biregular_degrees(7, 5, 0.3) == (5, 7)  # coprime sizes: only the dense graph is biregular


def _is_ring_interval(cols: torch.Tensor, n: int) -> bool:
    """True if the set ``cols`` is one contiguous arc of the ring 0..n-1."""
    present = torch.zeros(n, dtype=torch.bool)
    present[cols] = True
    starts = present & ~present.roll(1)
    return int(starts.sum()) == 1 or bool(present.all())


@pytest.mark.parametrize("shape", [(32, 128), (128, 32), (50, 50)])
def test_brf_r0_is_a_band(shape: tuple[int, int]) -> None:
    out_f, in_f = shape
    m = make_mask("brf", out_f, in_f, 0.1, 0, "l", cfg_for("brf", 0.1, brf_r=0.0))
    small = m if out_f <= in_f else m.t()
    n_small, n_large = small.shape
    stride = n_large // n_small
    k = small.sum(1)
    for i in range(n_small):
        cols = small[i].nonzero().squeeze(1)
        assert _is_ring_interval(cols, n_large)
        diff = (cols - i * stride).abs()
        ring = torch.minimum(diff, n_large - diff)
        assert int(ring.max()) <= (int(k[i]) + 1) // 2  # the k nearest nodes around the centre
    assert int(k.max() - k.min()) <= 1  # fixed degrees


def test_brf_r1_degree_statistics_match_er() -> None:
    n, rho = 512, 0.1
    er = torch.stack([make_mask("er", n, n, rho, s, "l", cfg_for("er", rho)) for s in range(3)])
    rnd = torch.stack([make_mask("brf", n, n, rho, s, "l", cfg_for("brf", rho, brf_r=1.0, brf_degree="random"))
                       for s in range(3)])
    fixed = make_mask("brf", n, n, rho, 0, "l", cfg_for("brf", rho, brf_r=1.0, brf_degree="fixed"))
    er_row = er.sum(2).double()
    er_col = er.sum(1).double()
    for dim in (2, 1):
        a, b = rnd.sum(dim).double(), er.sum(dim).double()
        assert a.mean().item() == pytest.approx(b.mean().item(), rel=1e-9)
        assert a.std().item() == pytest.approx(b.std().item(), rel=0.12)
    # fixed degrees: rows are regular by design, columns are as random as ER's
    assert int(fixed.sum(1).max() - fixed.sum(1).min()) <= 1
    assert fixed.sum(0).double().std().item() == pytest.approx(er_col.std().item(), rel=0.12)
    assert er_row.std().item() > 5  # ER rows are not regular: the comparison above is informative
    s_er = layer_report("er", er[0])["sigma2_over_bound"]
    s_brf = layer_report("brf", rnd[0])["sigma2_over_bound"]
    assert s_brf == pytest.approx(s_er, rel=0.05)


def test_brf_low_r_has_almost_no_spectral_gap() -> None:
    m = make_mask("brf", 256, 256, 0.1, 0, "l", cfg_for("brf", 0.1, brf_r=0.1))
    assert layer_report("b", m)["spectral_gap"] < 0.15
    e = make_mask("er", 256, 256, 0.1, 0, "l", cfg_for("er", 0.1))
    assert layer_report("e", e)["spectral_gap"] > 0.6


def test_erk_never_exceeds_one_and_hits_the_global_density() -> None:
    shapes = {"tiny": (4, 4), "small": (16, 64), "big": (512, 512), "wide": (512, 2048)}
    total = sum(o * i for o, i in shapes.values())
    for density in (0.01, 0.1, 0.3, 0.6, 0.9):
        dens = erk(shapes, density)
        assert max(dens.values()) <= 1.0
        kept = sum(dens[n] * o * i for n, (o, i) in shapes.items())
        assert kept == pytest.approx(density * total, rel=1e-9)
    dens = erk(shapes, 0.3)
    assert dens["tiny"] == 1.0 and dens["small"] == 1.0  # raw ERK would put these above 1
    ratio = dens["big"] / ((512 + 512) / 512**2)
    assert dens["wide"] == pytest.approx(ratio * (512 + 2048) / (512 * 2048), rel=1e-12)


def test_nm_density_must_agree() -> None:
    with pytest.raises(ConfigError, match="sparse.density"):
        SparseConfig(density=0.1, topology="nm", nm_n=2, nm_m=4)
    with pytest.raises(ConfigError, match="sparse.allocation"):
        SparseConfig(density=0.5, topology="nm", allocation="erk")
    with pytest.raises(ConfigError, match="nm_m"):
        make_mask("nm", 8, 6, 0.5, 0, "l", cfg_for("nm", 0.5))


def _digest(seed: int) -> str:
    h = hashlib.sha256()
    for topo in sorted(TOPOLOGIES):
        rho = 0.5 if topo == "nm" else 0.1
        h.update(make_mask(topo, 48, 96, rho, seed, f"blocks.1.{topo}", cfg_for(topo, rho)).numpy().tobytes())
    return h.hexdigest()


def test_two_processes_draw_equal_masks() -> None:
    here_dir = str(Path(__file__).parent)
    code = f"import sys; sys.path.insert(0, {here_dir!r}); from test_topology import _digest; print(_digest(7))"
    torch.manual_seed(123)  # the global RNG must not matter
    here = _digest(7)
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == here
    assert _digest(8) != here


def test_top_two_singular_values_lanczos_matches_exact() -> None:
    m = make_mask("er", 600, 700, 0.05, 0, "l", cfg_for("er", 0.05))
    s = torch.linalg.svdvals(m.double())
    s1, s2 = top_two_singular_values(m)
    assert s1 == pytest.approx(float(s[0]), rel=1e-6) and s2 == pytest.approx(float(s[1]), rel=1e-6)
