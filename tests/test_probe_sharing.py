"""Probes that share forwards give exactly the numbers of their direct computation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparsecl.config import DEFAULT_PROBES, build_config
from sparsecl.data.domains import load_domains
from sparsecl.data.stream import domain_val_windows
from sparsecl.methods import build_method
from sparsecl.probes import PROBES
from sparsecl.probes import context as context_mod
from sparsecl.probes.context import FEATURES, Features, FeatureStore, PhaseStates, ProbeContext
from sparsecl.probes.geometry import lmc_barrier
from sparsecl.probes.linalg import dormant_fraction
from sparsecl.probes.run import learned_phases, run_probes
from sparsecl.sparse.build import build_model
from sparsecl.store.checkpoint import model_tensors
from sparsecl.train.runner import run_experiment

CFG = {"name": "s", "threads": 1, "device": "cpu", "schedule": "arith,facts,cipher",
       "model": {"n_layer": 2, "n_head": 2, "d_model": 16, "block_size": 16},
       "sparse": {"density": 0.5},
       "train": {"steps_per_phase": 6, "batch_size": 4, "warmup_steps": 1},
       "eval": {"every": 0, "tokens": 256, "batch_size": 8}, "probes": [],
       "probe": {"batch_size": 4, "lmc_points": 5}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out: Path = tmp_path_factory.mktemp("runs")
    run_experiment([build_config(CFG)], out, progress_bar=False)
    return out / "s"


def _ctx_at(run_dir: Path, j: int) -> ProbeContext:
    """The probe context at the end of phase j of the tiny sparse run, on a fresh model and fresh caches."""
    cfg = build_config(CFG)
    doms = load_domains(cfg.data, cfg.model.block_size)
    windows = domain_val_windows({n: d.val for n, d in doms.items()}, cfg.seed, 256, 16)
    model, _, _ = build_model(cfg, torch.device("cpu"))
    states = PhaseStates(run_dir / "ckpt", cfg)
    model.load_state_dict(states(j), strict=False)
    model.eval()
    method = build_method("naive", {})
    return ProbeContext(model=model, cfg=cfg, windows=windows, phase=j, step=6 * j,
                        current=list(cfg.schedule[j - 1].domains), learned_phase=learned_phases(cfg, method, j),
                        states=states, device=torch.device("cpu"), phase_step=6)


@pytest.fixture(scope="module")
def ctx(run_dir: Path) -> ProbeContext:
    """The probe context at the end of phase 3 of a tiny sparse run (two old domains, one new)."""
    return _ctx_at(run_dir, 3)


def test_feature_forward_loss_is_the_model_loss(ctx: ProbeContext) -> None:
    for d in ctx.windows:
        with torch.no_grad():
            assert ctx.features(d).loss == float(ctx.model.loss(*ctx.probe_batch(d)))
            prev = ctx.model_at(2)
            assert ctx.features(d, 2).loss == float(prev.loss(*ctx.probe_batch(d)))


def test_lmc_with_shared_endpoints_equals_the_direct_barrier(ctx: ProbeContext) -> None:
    got = run_probes(ctx, ["lmc"])["lmc"]
    b = model_tensors(ctx.model)
    a = {k: v for k, v in ctx.states(2).items() if k in b}
    doms = ctx.seen

    def losses(m: torch.nn.Module) -> dict[str, float]:
        m.eval()
        return {d: float(m.loss(*ctx.probe_batch(d))) for d in doms}

    direct = lmc_barrier(ctx.model, a, b, losses, [0.0, 0.25, 0.5, 0.75, 1.0])  # every alpha by a forward
    assert {k: v for k, v in got.items() if k.endswith("/barrier")} == {f"{d}/barrier": v for d, v in direct.items()}
    assert got["old_barrier_mean"] == (direct["arith"] + direct["facts"]) / 2
    assert got["new_barrier_mean"] == direct["cipher"]


def test_dormant_with_shared_scores_equals_per_threshold_fractions(ctx: ProbeContext) -> None:
    got = PROBES["dormant"].fn(ctx)
    feats = [ctx.features(d) for d in ctx.windows]
    for tau in ctx.cfg.probe.dormant_taus:
        per_layer = [dormant_fraction(torch.cat([f.mlp[lyr] for f in feats]), tau) for lyr in range(2)]
        assert [got[f"L{lyr}/tau{tau:g}"] for lyr in range(2)] == per_layer
        assert got[f"tau{tau:g}"] == sum(per_layer) / 2


def _cold() -> None:
    """Forget what earlier probe points left in the process (features, subspaces, plasticity's reference)."""
    from sparsecl.probes import linalg, plasticity

    FEATURES.clear()
    linalg._SUBSPACES.clear()
    plasticity._FROM_INIT.clear()


def test_probes_reusing_earlier_points_give_the_numbers_of_a_cold_start(run_dir: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The previous phase's features and weight subspaces come from the point before (the checkpoint is bitwise
    that model): every default probe's numbers equal those computed from scratch, with fewer forwards."""
    forwards: list[int] = []
    real = context_mod.collect_features
    monkeypatch.setattr(context_mod, "collect_features", lambda *a: forwards.append(1) or real(*a))
    _cold()
    cold = run_probes(_ctx_at(run_dir, 3), list(DEFAULT_PROBES))
    n_cold = len(forwards)
    _cold()
    run_probes(_ctx_at(run_dir, 2), list(DEFAULT_PROBES))
    forwards.clear()
    warm = run_probes(_ctx_at(run_dir, 3), list(DEFAULT_PROBES))
    assert warm == cold
    assert set(cold) == set(DEFAULT_PROBES) and cold["forgetting_kl"] and cold["subspace_rotation"]
    # phase 3's point recomputes only its own model's features (3 domains), not phase 2's (3) nor phase 1's (arith)
    assert (n_cold, len(forwards)) == (7, 3)


def test_forgetting_kl_from_shared_features_equals_direct_forwards(ctx: ProbeContext) -> None:
    from sparsecl.probes.forgetting_law import forward_kl

    got = PROBES["forgetting_kl"].fn(ctx)
    before = ctx.model_at(2)
    assert before is not None
    with torch.no_grad():
        for d in ("cipher", "arith", "facts"):
            x, _ = ctx.probe_batch(d)
            assert got[f"{d}/kl"] == forward_kl(before(x), ctx.model(x))


def test_feature_store_keeps_recent_entries_within_its_budget() -> None:
    def feats(n: int) -> Features:
        return Features([torch.zeros(n)], torch.zeros(0), [], None)  # n float32 = 4n bytes

    store = FeatureStore(max_bytes=100)
    made: list[str] = []

    def get(key: str, n: int) -> Features:
        return store.get((key,), lambda: made.append(key) or feats(n))

    get("a", 10), get("b", 10), get("a", 10)  # 80 bytes: both kept, 'a' used last
    get("c", 10)  # 120 > 100: the least recently used ('b') leaves
    get("a", 10), get("b", 10)
    get("big", 30)  # 120 bytes alone: returned, never kept
    get("big", 30)
    assert made == ["a", "b", "c", "b", "big", "big"]
