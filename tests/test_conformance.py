"""Conformance: every registered method on every sparse backend, checked on what the run SAVED.

Each method trains a tiny sparse run through ``run_experiment`` (the path ``sparsecl run`` takes) with the
masked, the csr and the block backend. Then every phase checkpoint is read back from disk, model and resume state:
every weight outside its saved mask is exactly 0, and so is every weight-shaped tensor of the optimizer and
the method (AdamW moments, EWC/SI importances and anchors, an LwF teacher); csr state holds exactly one
entry per kept weight; topology.json and the summary count the connections the final checkpoint holds.
A method that is added to the registry is covered without editing this file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import MULTIPROC
from methods_util import FAST_PARAMS, make_trainer, tiny_config
from safetensors.torch import load_file

from sparsecl.cli import main
from sparsecl.config import to_dict
from sparsecl.errors import ConfigError
from sparsecl.methods import METHODS
from sparsecl.sparse.backends import choose_backend
from sparsecl.sparse.csr import CSRLinear
from sparsecl.store.record import RunSummary, read_summary
from sparsecl.train.runner import run_experiment
from sparsecl.train.validate import checked_config

torch.set_num_threads(1)

BACKENDS = ("masked", "csr", "block")
VALUES_BACKENDS = ("csr", "block")
"""Backends whose layers store only the kept values (1-D ``values``), not a dense ``weight``."""
TOKENS = 4 * 16
"""Tokens per step of tiny_config (batch 4 x block 16): backend=auto decides with them."""
DENSITY = 0.3
PHASES = 3
FROZEN_BASE = {"lora", "olora"}
"""Methods whose base is frozen from phase 2 on (with their defaults): only their low-rank adapters train."""


def _run(tmp_path: Path, method: str, backend: str, density: float = DENSITY) -> tuple[Path, RunSummary]:
    cfg = tiny_config(method, FAST_PARAMS.get(method, {}), density=density, steps=3,
                      sparse={"density": density, "backend": backend}, checkpoint_resume_state="every")
    [summary] = run_experiment([cfg], tmp_path, progress_bar=False)
    return tmp_path / cfg.name, summary


def _masks(model: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Module name -> saved mask, e.g. 'blocks.0.attn.qkv' (from the key 'model.blocks.0.attn.qkv.mask')."""
    return {k[len("model."): -len(".mask")]: v.bool() for k, v in model.items() if k.endswith(".mask")}


def _owner(key: str, masks: dict[str, torch.Tensor]) -> tuple[str, str] | None:
    """(module, 'weight' | 'values') for a tensor keyed '<any prefix.><module>.<weight|values>[.<state>]'."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part in ("weight", "values"):
            for j in range(i):  # the longest module name that carries a saved mask
                mod = ".".join(parts[j:i])
                if mod in masks:
                    return mod, part
    return None


def _check_invariant(tensors: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], where: str) -> int:
    """Every weight-shaped tensor is 0 off its layer's mask; every values-shaped one has one entry per kept
    weight. Returns the number of tensors checked."""
    checked = 0
    for key, t in tensors.items():
        owner = _owner(key, masks)
        if owner is None or t.dim() == 0:
            continue
        mod, kind = owner
        mask = masks[mod]
        if kind == "weight":
            assert t.shape == mask.shape, (where, key)
            off = t[~mask]
            worst = float(off.abs().max()) if off.numel() else 0.0
            assert worst == 0.0, (where, key, worst)
        else:
            assert t.shape == (int(mask.sum()),), (where, key, tuple(t.shape), int(mask.sum()))
        checked += 1
    return checked


def _layer_nonzero(masks: dict[str, torch.Tensor], name: str) -> int:
    """Saved connections of one layer of topology.json, named '<module>.<part>' (q, k, v share 'qkv')."""
    mod, part = name.rsplit(".", 1)
    parts = ["q", "k", "v"] if mod.endswith("qkv") else [part]
    mask = masks[mod]
    step = mask.shape[0] // len(parts)
    i = parts.index(part)
    return int(mask[i * step:(i + 1) * step].sum())


def _check_saved_run(run_dir: Path, summary: RunSummary, method: str, backend: str) -> None:
    """Every phase checkpoint keeps the invariant; the final one matches topology.json and the summary."""
    ckpt = run_dir / "ckpt"
    topo = json.loads((run_dir / "topology.json").read_text())
    final = _masks(load_file(ckpt / f"phase-{PHASES:03d}.safetensors"))
    # backend=auto decides per layer from its realised density
    chosen = {mod: choose_backend(backend, float(m.float().mean()), torch.device("cpu"), m, TOKENS)
              for mod, m in final.items()}
    assert {row["name"]: row["backend"] for row in topo["layers"]} == {
        row["name"]: chosen[row["name"].rsplit(".", 1)[0]] for row in topo["layers"]}
    for phase in range(1, PHASES + 1):
        tag = f"phase-{phase:03d}"
        model = load_file(ckpt / f"{tag}.safetensors")
        resume = load_file(ckpt / f"{tag}.resume.safetensors")
        masks = _masks(model)
        assert masks, tag
        n_model = _check_invariant(model, masks, f"{tag} model")
        assert n_model == len(masks)  # every masked layer's weight
        moments = [k for k in resume if k.startswith("optim.") and k.endswith((".exp_avg", ".exp_avg_sq"))]
        owned = [_owner(k, masks) for k in moments]
        want = {(mod, "values" if chosen[mod] in VALUES_BACKENDS else "weight") for mod in masks}
        if method in FROZEN_BASE and phase >= 2:  # no AdamW state for the frozen base; A and B of every part
            assert not any(o in want for o in owned), tag
            parts = sum(3 if mod.endswith("qkv") else 1 for mod in masks)
            assert sorted(k.split(".lora.")[0] for k in moments if ".lora." in k) == sorted(
                f"optim.{mod}" for mod in masks for _ in range((3 if mod.endswith("qkv") else 1) * 4)), tag
            assert sum(".lora." in k for k in moments) == 4 * parts, tag
            sets = {k.split(".lora.")[1].split(".")[0] for k in model if ".lora." in k}
            bs = [v for k, v in model.items() if ".lora." in k and k.endswith(".B")]
            if method == "lora":  # merged at every phase end: B = 0, so the saved base alone is the model
                assert sets == {f"p{phase}"} and all(float(b.abs().max()) == 0.0 for b in bs), tag
            else:  # olora keeps one frozen set per adapted phase
                assert sets == {f"p{q}" for q in range(2, phase + 1)}, tag
            _check_invariant(resume, masks, f"{tag} resume")  # any weight-shaped method state
        else:
            assert sum(o in want for o in owned) == 2 * len(masks), tag  # every layer trains, in its backend's form
            assert _check_invariant(resume, masks, f"{tag} resume") >= 2 * len(masks), tag
    # the final checkpoint holds the connectivity that topology.json and the summary report
    for row in topo["layers"]:
        assert row["nonzero"] == _layer_nonzero(masks, row["name"]), row["name"]
    saved_nnz = sum(int(m.sum()) for m in masks.values())
    assert topo["masked_params_nonzero"] == saved_nnz
    assert summary.masked_params_nonzero == saved_nnz
    assert sum(li.nonzero for li in summary.layers) == saved_nnz
    dense_total = sum(v.numel() for k, v in model.items() if not k.endswith(".mask"))
    assert summary.params_total == dense_total
    assert summary.params_nonzero == dense_total - sum(int((~m).sum()) for m in masks.values())
    assert len(masks) == 4 * (2 + (PHASES - 1 if method == "expand" else 0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_saved_checkpoints_keep_the_mask_invariant(tmp_path: Path, method: str, backend: str) -> None:
    run_dir, summary = _run(tmp_path, method, backend)
    _check_saved_run(run_dir, summary, method, backend)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_block_tile_loop_conforms(tmp_path: Path, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block backend's other arithmetic, one GEMM per tile (used from b = TILE_LOOP_MIN_BLOCK up; every tile
    here is smaller, so the threshold is lowered): the same checks hold under every method."""
    from sparsecl.sparse import block

    monkeypatch.setattr(block, "TILE_LOOP_MIN_BLOCK", 1)
    run_dir, summary = _run(tmp_path, method, "block")
    _check_saved_run(run_dir, summary, method, "block")


@pytest.mark.parametrize("method", ["expand", "ewc"])
def test_auto_backend_at_low_density_conforms(tmp_path: Path, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """backend=auto on the CPU picks csr for layers at <= 5% realised density (below every CPU's csr break-even;
    the tiny layers' minimum-work rule is lifted here so that auto does pick csr): the same checks hold."""
    from sparsecl.sparse import backends

    monkeypatch.setattr(backends, "MIN_SPARSE_WORK", 0)
    run_dir, summary = _run(tmp_path, method, "auto", density=0.05)
    _check_saved_run(run_dir, summary, method, "auto")
    backends = [row["backend"] for row in json.loads((run_dir / "topology.json").read_text())["layers"]]
    assert backends.count("csr") >= len(backends) // 2, backends


@pytest.mark.parametrize("backend", BACKENDS)
def test_expand_new_blocks_preserve_function_on_every_backend(tmp_path: Path, backend: str) -> None:
    cfg = tiny_config("expand", {"new_blocks": 2}, density=DENSITY, sparse={"density": DENSITY, "backend": backend})
    tr = make_trainer(cfg, tmp_path / "r")
    tr.optimizer = tr.make_optimizer()
    model = tr.model.double()
    gen = torch.Generator().manual_seed(0)
    for mod in model.maskable().values():  # nonzero output projections, so that zeroing the copies matters
        w = mod.dense_weight().detach()
        mod.set_weight(w + 0.05 * torch.randn(w.shape, generator=gen, dtype=w.dtype))
        assert isinstance(mod, CSRLinear) == (backend in VALUES_BACKENDS)
    x, _ = tr.batch(["arith"], "t", 0)
    model.eval()
    with torch.no_grad():
        before = model(x)
    tr.method.begin_phase(tr, 2)
    with torch.no_grad():
        after = model(x)
    assert float((after - before).abs().max()) < 1e-12
    positions = tr.method.expansions[0]["positions"]
    for i in positions:
        new, src = model.blocks[i], model.blocks[i - 1]
        for name, mod in new.named_modules():
            if not hasattr(mod, "dense_weight"):
                continue
            assert isinstance(mod, CSRLinear) == (backend in VALUES_BACKENDS)
            w, mask = mod.dense_weight().detach(), mod.mask
            assert float(w[~mask].abs().max()) == 0.0, name
            assert not torch.equal(mask, src.get_submodule(name).mask), name  # a fresh draw
            if mod.residual_out:
                assert float(w.abs().max()) == 0.0 and (mod.bias is None or float(mod.bias.abs().max()) == 0.0), name
            else:  # the copy is the source's weight restricted to the new mask
                assert torch.equal(w, src.get_submodule(name).dense_weight().detach() * mask), name
            if backend in VALUES_BACKENDS:
                assert mod.nnz == int(mask.sum()) == mod.values.numel()  # the index describes the new mask
    # trained parameters are the new blocks' and the rebuilt optimizer holds exactly them
    in_opt = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert in_opt == {id(p) for i in positions for p in model.blocks[i].parameters()}


STAGES = [{"domain": "arith"}, {"domain": "facts_qa", "objective": "sft"}, {"domain": "facts_qa", "objective": "rl"}]


def methods_tiny_raw(method: str, backend: str, data: dict[str, Any]) -> dict[str, Any]:
    """The stages run's raw config (before validation, so a refusal can be checked where it is raised)."""
    sft = [*STAGES[:2], {**STAGES[2], "objective": "sft"}]  # valid for every method; rl is put back below
    cfg = tiny_config(method, FAST_PARAMS.get(method, {}), density=DENSITY, steps=3,
                      sparse={"density": DENSITY, "backend": backend}, checkpoint_resume_state="every",
                      schedule=sft, data=data, checkpoint_every=2,
                      rl={"group_size": 2, "completion_length": 3, "prompts": 1, "updates_per_batch": 2})
    raw = to_dict(cfg)
    raw["schedule"][2]["objective"] = "rl"
    return raw


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_sft_and_rl_phases_keep_the_mask_invariant(tmp_path: Path, method: str, backend: str) -> None:
    """The same saved-checkpoint checks on a pretrain -> SFT -> RL schedule (updates_per_batch 2, so the mid-RL
    checkpoint falls inside a sampled batch); the mid-RL checkpoint's resume state (with GRPO's reference model)
    keeps the invariant too. A method that refuses rl phases is refused in one line, exit 2, nothing written,
    and runs pretrain -> SFT -> SFT instead."""
    data = {"domains": [{"name": n, "max_bytes": 20000} for n in ("arith", "dyck", "facts", "facts_qa")]}
    refused = METHODS[method].rl_refused
    raw = methods_tiny_raw(method, backend, data)
    if refused:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
        out = tmp_path / "refused"
        assert main(["run", str(tmp_path / "c.yaml"), "--out", str(out), "--no-progress"]) == 2
        assert not out.exists()
        with pytest.raises(ConfigError, match=r"schedule\[2\]\.objective.*cannot run an rl phase"):
            checked_config(raw)
        raw["schedule"] = [*STAGES[:2], {**STAGES[2], "objective": "sft"}]
    cfg = checked_config(raw)
    [summary] = run_experiment([cfg], tmp_path, progress_bar=False)
    run_dir = tmp_path / cfg.name
    _check_saved_run(run_dir, summary, method, backend)
    if refused:
        return
    mid_rl = run_dir / "ckpt" / "step-0000008.resume.safetensors"  # phase 3, step 2 of 3
    resume = load_file(mid_rl)
    masks = _masks(load_file(run_dir / "ckpt" / "step-0000008.safetensors"))
    refs = {k: v for k, v in resume.items() if k.startswith("objective.ref.")}
    assert _check_invariant(refs, masks, "mid-RL reference") == len(masks)
    assert summary.stages["objective_stats"][2]["completion_length"] >= 1.0


@MULTIPROC
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_rank_ddp_keeps_the_mask_invariant(tmp_path: Path, backend: str) -> None:
    """The distributed path (torchrun, 2 ranks, gloo): EWC's penalty and Fisher on both backends; what rank 0
    saved keeps the invariant and equals the one-process run."""
    from dist_util import torchrun, write_config

    cfg = tiny_config("ewc", FAST_PARAMS.get("ewc", {}), density=DENSITY, steps=3,
                      sparse={"density": DENSITY, "backend": backend}, checkpoint_resume_state="every", probes=[])
    p = torchrun(2, "run", str(write_config(cfg, tmp_path / "c.yaml")), "--out", str(tmp_path / "ddp"),
                 "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    summary = read_summary(tmp_path / "ddp" / cfg.name)
    assert summary.extra["ranks"] == 2
    _check_saved_run(tmp_path / "ddp" / cfg.name, summary, "ewc", backend)
    [one] = run_experiment([cfg], tmp_path / "one", progress_bar=False)
    diff = torch.tensor(summary.loss_matrix) - torch.tensor(one.loss_matrix)
    assert float(diff.abs().max()) < 1e-5
