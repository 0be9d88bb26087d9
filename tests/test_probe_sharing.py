"""Probes that share forwards give exactly the numbers of their direct computation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparsecl.config import build_config
from sparsecl.data.domains import load_domains
from sparsecl.data.stream import domain_val_windows
from sparsecl.methods import build_method
from sparsecl.probes import PROBES
from sparsecl.probes.context import PhaseStates, ProbeContext
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
def ctx(tmp_path_factory: pytest.TempPathFactory) -> ProbeContext:
    """The probe context at the end of phase 3 of a tiny sparse run (two old domains, one new)."""
    out: Path = tmp_path_factory.mktemp("runs")
    cfg = build_config(CFG)
    run_experiment([cfg], out, progress_bar=False)
    doms = load_domains(cfg.data, cfg.model.block_size)
    windows = domain_val_windows({n: d.val for n, d in doms.items()}, cfg.seed, 256, 16)
    model, _, _ = build_model(cfg, torch.device("cpu"))
    states = PhaseStates(out / "s" / "ckpt", cfg)
    model.load_state_dict(states(3), strict=False)
    model.eval()
    method = build_method("naive", {})
    return ProbeContext(model=model, cfg=cfg, windows=windows, phase=3, step=18, current=["cipher"],
                        learned_phase=learned_phases(cfg, method, 3), states=states, device=torch.device("cpu"),
                        phase_step=6)


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
