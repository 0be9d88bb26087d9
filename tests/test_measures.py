"""Measurements for like-with-like comparisons: summary keys (learned drop, normalised forgetting, bwt_last,
dead units, nonzero split), sparse.min_degree, the near-biregular expander and masked-layer matching."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from sparsecl.config import ConfigError, ModelConfig, SparseConfig, build_config
from sparsecl.metrics import cl
from sparsecl.model.gpt import GPT
from sparsecl.sparse.apply import apply_sparsity, draw_masks, nonzero_split, structural_counts
from sparsecl.sparse.matching import resolve_matching, split_counts
from sparsecl.sparse.topology import make_mask, n_kept
from sparsecl.sweep import expand, load_sweep
from sparsecl.train.runner import run_experiment
from sparsecl.train.validate import checked_config

torch.set_num_threads(1)


def test_summary_records_drop_normalised_forgetting_bwt_last_dead_units_and_split(tmp_path: Path, tiny) -> None:
    cfg = tiny(**{"sparse.density": 0.03, "schedule": "arith,facts,arith", "train.steps_per_phase": 8,
                  "eval.every": 100})
    [s] = run_experiment([build_config(cfg)], tmp_path, progress_bar=False)
    L = s.loss_matrix
    assert s.domains == ["arith", "facts", "cipher"]
    assert s.first_trained_phase == [1, 2, None] and s.last_trained_phase == [3, 2, None]
    # learned drop by hand: D_arith = L[0] - min(L[1], L[2]); D_facts = L[1] - min(L[2]); cipher never trained
    d_arith = L[0][0] - min(L[1][0], L[2][0])
    d_facts = L[1][1] - L[2][1]
    assert s.learned_drop == {"arith": pytest.approx(d_arith, abs=1e-6), "facts": pytest.approx(d_facts, abs=1e-6),
                                 "cipher": None}
    f = cl.forgetting_per_domain(L, s.first_trained_phase)
    expect = {d: f[i] / dd for i, (d, dd) in enumerate([("arith", d_arith), ("facts", d_facts)]) if dd > 0}
    assert s.normalised_forgetting == {d: pytest.approx(v, abs=1e-5) for d, v in expect.items()}
    assert s.avg_normalised_forgetting == pytest.approx(sum(expect.values()) / len(expect), abs=1e-5)
    # bwt (GEM) from the first training of arith (phase 1), bwt_last only from facts (arith was retrained last)
    assert s.bwt == pytest.approx(((L[1][0] - L[3][0]) + (L[2][1] - L[3][1])) / 2, abs=1e-6)
    assert s.bwt_last == pytest.approx(L[2][1] - L[3][1], abs=1e-6)
    for key in ("bwt", "bwt_last", "learned_drop", "normalised_forgetting", "dead_unit_fraction"):
        assert key in s.sign_conventions
    # dead units: rows without an input link over all masked rows, per layer and in topology.json
    rows = sum(li.shape[0] for li in s.layers)
    assert s.dead_unit_fraction == pytest.approx(sum(li.dead_rows for li in s.layers) / rows, abs=1e-6)
    assert s.dead_unit_fraction > 0.1  # 3% of 32 inputs: (0.97)^32 ~ 38% of rows are dead
    topo = json.loads((tmp_path / "tiny" / "topology.json").read_text())
    assert topo["dead_unit_fraction"] == s.dead_unit_fraction
    assert [li.dead_cols for li in s.layers] == [li["dead_cols"] for li in topo["layers"]]
    # nonzero split: token (256 x 32) + position (32 x 32) embeddings, the kept masked weights, LayerNorms
    split = s.nonzero_split
    assert split == {"embeddings": 256 * 32 + 32 * 32, "masked": s.masked_params_nonzero,
                     "other": 2 * 2 * 32 + 32}
    assert sum(split.values()) == s.params_nonzero
    assert s.matching["dense_reference_nonzero_split"] == {"embeddings": 256 * 32 + 32 * 32, "masked": 2 * 12 * 32 * 32,
                                                  "other": 2 * 2 * 32 + 32}


def test_dense_summary_split_counts_every_targeted_weight(tmp_path: Path, tiny) -> None:
    [s] = run_experiment([build_config(tiny(**{"train.steps_per_phase": 2, "schedule": "arith,facts"}))], tmp_path,
                         progress_bar=False)
    assert s.nonzero_split == s.matching["dense_reference_nonzero_split"] == {
        "embeddings": 256 * 32 + 32 * 32, "masked": 2 * 12 * 32 * 32, "other": 2 * 2 * 32 + 32}
    assert s.dead_unit_fraction == 0.0
    assert s.bwt_last == s.bwt  # no domain recurs
    assert all(li.dead_rows == 0 and li.dead_cols == 0 for li in s.layers)


SHAPES_1PCT = [(128, 128), (512, 128), (128, 512)]


@pytest.mark.parametrize("topology,degree,r", [("er", "fixed", 0.25), ("brf", "fixed", 0.25), ("brf", "random", 0.25),
                                               ("brf", "fixed", 0.0), ("brf", "random", 1.0)])
def test_min_degree_gives_every_row_and_column_k_links_at_the_exact_count(topology: str, degree: str,
                                                                          r: float) -> None:
    for shape in SHAPES_1PCT:
        for k, rho in ((1, 0.01), (2, 0.02)):
            cfg = SparseConfig(density=rho, topology=topology, brf_degree=degree, brf_r=r,  # type: ignore[arg-type]
                               min_degree=k)
            m = make_mask(topology, *shape, rho, 5, "blocks.0.mlp.up", cfg)
            assert int(m.sum()) == n_kept(*shape, rho), (shape, k)
            assert int(m.sum(1).min()) >= k and int(m.sum(0).min()) >= k, (shape, k)
            assert torch.equal(m, make_mask(topology, *shape, rho, 5, "blocks.0.mlp.up", cfg))  # (seed, name) fixes it
            assert not torch.equal(m, make_mask(topology, *shape, rho, 5, "blocks.1.mlp.up", cfg))
    # without the guarantee the same 1% ER layer has dead rows: the option changes something real
    plain = make_mask("er", 128, 128, 0.01, 5, "blocks.0.mlp.up", SparseConfig(density=0.01))
    assert int((plain.sum(1) == 0).sum()) > 10


def test_min_degree_zero_draws_the_masks_it_drew_before() -> None:
    cfg = SparseConfig(density=0.05, topology="brf", brf_degree="random")
    assert torch.equal(make_mask("brf", 64, 96, 0.05, 1, "l", cfg),
                       make_mask("brf", 64, 96, 0.05, 1, "l", dataclasses.replace(cfg, min_degree=0)))


def test_infeasible_min_degree_names_the_field_and_the_layer() -> None:
    cfg = SparseConfig(density=0.01, topology="er", min_degree=2)
    with pytest.raises(ConfigError) as e:  # 2 * 128 = 256 links needed, 1% of 128 x 128 keeps 164
        make_mask("er", 128, 128, 0.01, 0, "blocks.0.attn.q", cfg)
    msg = str(e.value)
    assert "sparse.min_degree" in msg and "blocks.0.attn.q" in msg and "256" in msg and "164" in msg
    with pytest.raises(ConfigError, match="sparse.min_degree"):
        SparseConfig(density=0.5, topology="nm", min_degree=1)
    with pytest.raises(ConfigError, match="sparse.min_degree"):
        SparseConfig(density=0.1, min_degree=-1)


@pytest.mark.parametrize("shape,rho", [((128, 128), 0.05), ((512, 128), 0.05), ((96, 40), 0.13), ((64, 64), 0.1)])
def test_near_biregular_expander_hits_the_count_with_degrees_within_one(shape: tuple[int, int], rho: float) -> None:
    from sparsecl.sparse.report import layer_report

    out_f, in_f = shape
    e = n_kept(out_f, in_f, rho)
    m = make_mask("expander", out_f, in_f, rho, 2, "l", SparseConfig(density=rho, topology="expander"))
    assert int(m.sum()) == e
    assert set(m.sum(1).tolist()) <= {e // out_f, -(-e // out_f)}
    assert set(m.sum(0).tolist()) <= {e // in_f, -(-e // in_f)}
    assert int((m.sum(1) == -(-e // out_f)).sum()) == (e % out_f or out_f)  # exactly e mod out rows carry the +1
    rep = layer_report("x", m, rho)
    assert rep["sigma2_over_bound"] < 1.1  # still near-Ramanujan with mean degrees in the bound


def test_topology_preset_expander_density_within_one_percent_of_target() -> None:
    [cfg] = [r.config for r in expand(*load_sweep(None, [], "topology"))
             if r.config.sparse.topology == "expander" and r.config.seed == 0]
    with torch.device("meta"):
        model = GPT(cfg.model)
    drawn = list(draw_masks(model, cfg.sparse, cfg.seed))
    assert {tuple(m.shape) for _, _, m in drawn} == {(128, 128), (512, 128), (128, 512)}
    for _, rho, m in drawn:
        assert abs(m.double().mean().item() - rho) / rho <= 0.01
    total = sum(m.numel() for _, _, m in drawn)
    assert abs(sum(int(m.sum()) for _, _, m in drawn) / total - 0.05) / 0.05 <= 0.01
    exact = dataclasses.replace(cfg.sparse, expander_degree="exact")  # the strict form sits at 6/128 = 4.69%
    assert sum(int(m.sum()) for _, _, m in draw_masks(model, exact, cfg.seed)) / total == pytest.approx(6 / 128)


@pytest.mark.parametrize("density,topology", [(0.01, "er"), (0.05, "brf"), (0.1, "expander")])
def test_masked_params_matching_matches_the_masked_layers_nonzeros(density: float, topology: str) -> None:
    base = ModelConfig(n_layer=2, n_head=4, d_model=48, block_size=32)
    sparse = SparseConfig(density=density, topology=topology, matching="masked_params")
    match = resolve_matching(base, sparse)
    torch.manual_seed(0)
    model = GPT(match.model)
    apply_sparsity(model, sparse, 0)
    split = nonzero_split(model, sparse)
    dense_masked = 2 * (4 * 48 * 48 + 2 * 48 * 192)
    assert match.dense_reference_split["masked"] == dense_masked
    assert abs(split["masked"] - dense_masked) / dense_masked <= 0.02
    assert split == match.nonzero_split  # the shape-only prediction is the built model's split
    assert sum(split.values()) == structural_counts(model)[1] == match.nonzero_params
    assert split["embeddings"] == (256 + 32) * match.model.d_model


def test_params_matching_at_one_percent_spends_most_of_the_budget_on_embeddings() -> None:
    base = ModelConfig(n_layer=4, n_head=4, d_model=128, block_size=128)
    by = {m: resolve_matching(base, SparseConfig(density=0.01, matching=m)) for m in ("params", "masked_params")}
    p = by["params"].nonzero_split
    assert p["embeddings"] / sum(p.values()) > 0.4  # the 45% at 1%
    assert p["masked"] < 0.6 * by["params"].dense_reference_split["masked"]  # 58% of the dense masked count
    q = by["masked_params"].nonzero_split
    assert abs(q["masked"] - by["masked_params"].dense_reference_split["masked"]) <= 0.02 * q["masked"]
    assert split_counts(base, SparseConfig(density=1.0)) == by["params"].dense_reference_split


def test_infeasible_min_degree_fails_when_the_config_is_built(tmp_path: Path, tiny) -> None:
    # tiny layers are 32 wide: 1% keeps 10 links of a 32 x 32 layer, fewer than the 32 one-per-row needs
    with pytest.raises(ConfigError, match=r"sparse.min_degree.*blocks.0.attn.qkv.q \(32x32\)"):
        checked_config(tiny(**{"sparse.density": 0.01, "sparse.min_degree": 1}))
    cfg = build_config(tiny(**{"sparse.density": 0.05, "sparse.min_degree": 1, "train.steps_per_phase": 2}))
    [s] = run_experiment([cfg], tmp_path, progress_bar=False)
    assert s.dead_unit_fraction == 0.0 and all(li.dead_cols == 0 for li in s.layers)
    assert s.masked_params_nonzero == 2 * (4 * n_kept(32, 32, 0.05) + 2 * n_kept(128, 32, 0.05))


def test_tables_show_normalised_forgetting_both_bwt_forms_and_dead_units_with_signs() -> None:
    from sparsecl.metrics.table import comparison_table, grouped_table

    base = {"method": "naive", "topology": "er", "density": 0.01, "params_total": 10, "params_nonzero": 5,
            "avg_forgetting": 0.5, "bwt": -0.25, "fwt": 0.1, "final_avg_loss": 2.0, "group": "er1"}
    rows = [{**base, "name": "a", "avg_normalised_forgetting": 0.4, "bwt_last": -0.75, "dead_unit_fraction": 0.3},
            {**base, "name": "b", "avg_normalised_forgetting": 0.6, "bwt_last": -0.25, "dead_unit_fraction": 0.3}]
    text = comparison_table(rows)
    header = text.splitlines()[0]
    for h in ("F/D normalised (+ = forgot)", "BWT first (- = forgot)", "BWT last (- = forgot)", "dead units",
              "avg forgetting F (+ = forgot)"):
        assert h in header
    first = text.splitlines()[2].split()
    assert first[4] == "30.0%" and first[7:11] == ["+0.500", "+0.400", "-0.250", "-0.750"]
    grouped = grouped_table(rows).splitlines()[2]
    # F/D: mean 0.5, t(0.975, 1) * sd / sqrt(2) = 12.706 * 0.1 = 1.271; BWT last: -0.5 ± 12.706 * 0.25 = 3.177
    assert "+0.500 ± 1.271" in grouped and "-0.500 ± 3.177" in grouped and " 30.0% " in grouped
    old = {**base, "name": "old"}  # a summary written before these keys existed still prints
    assert comparison_table([old]).splitlines()[2].split()[8] == "-"
