"""Every method, trained for real: the mask invariant holds and a killed run resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch
from methods_util import FAST_PARAMS as PARAMS
from methods_util import make_trainer, tiny_config

import sparsecl.train.trainer as trainer_mod
from sparsecl.methods import METHODS

torch.set_num_threads(1)


def test_every_method_is_covered() -> None:
    assert set(PARAMS) == set(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_mask_invariant_weights_and_adamw_moments(tmp_path, method) -> None:
    cfg = tiny_config(method, PARAMS[method], density=0.3, steps=4)
    tr = make_trainer(cfg, tmp_path / "r")
    tr.run()
    masked = [m for m in tr.model.maskable().values() if m.mask is not None]
    assert len(masked) == 4 * len(tr.model.blocks)  # qkv, o, up, down per block (new blocks too)
    checked = 0
    if method in ("lora", "olora"):  # the base is frozen after phase 1: no AdamW state at all, adapters have it
        base = [p for m in masked for p in m.parameters(recurse=False)]
        assert base and all(not p.requires_grad and p not in tr.optimizer.state for p in base)
        adapters = [p for m in masked for p in m.lora[f"p{len(tr.phases)}"].parameters()]
        assert adapters and all(p.requires_grad and "exp_avg" in tr.optimizer.state[p] for p in adapters)
    for m in masked:
        outside = ~m.mask
        assert float(m.weight.detach()[outside].abs().max()) == 0.0
        st = tr.optimizer.state.get(m.weight, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                assert float(st[key][outside].abs().max()) == 0.0
                checked += 1
    assert checked > 0 or method in ("lora", "olora")
    if method == "expand":
        assert len(tr.model.blocks) == 4


class Killed(Exception):
    pass


RESUME_CASES = [(m, PARAMS[m]) for m in sorted(METHODS)] + [("expand", {"train": "new", "new_blocks": 2})]
RESUME_CASES += [("sparseupdate", {"select": "random", "fraction": 0.3}), ("rigl", {"interval": 3, "end": 1.0})]
RESUME_CASES += [("lora", {"rank": 4, "at_phase_end": "keep"}), ("olora", {"rank": 4, "at_phase_end": "merge"}),
                 ("merge", {"mode": "task_arithmetic", "scale": 0.7}), ("lora", {"rank": 2, "full_first_phase": False})]


@pytest.mark.parametrize("method,params", RESUME_CASES)
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, method, params) -> None:
    cfg = tiny_config(method, params, density=0.5, steps=6, checkpoint_every=4)
    full = make_trainer(cfg, tmp_path / "full").run()

    def kill(step: int) -> None:
        if step == 11:  # phase 2, two steps after its mid-phase checkpoint at step 10
            raise Killed

    monkeypatch.setattr(trainer_mod, "_maybe_simulate_kill", kill)
    with pytest.raises(Killed):
        make_trainer(cfg, tmp_path / "cut").run()
    monkeypatch.setattr(trainer_mod, "_maybe_simulate_kill", lambda step: None)
    state = json.loads((tmp_path / "cut" / "ckpt" / "latest.json").read_text())
    assert state["tag"] == "step-0000010"
    resumed = make_trainer(cfg, tmp_path / "cut").run(resume=True)
    for key in ("loss_matrix", "acc_matrix", "avg_forgetting", "bwt", "final_avg_loss", "params_total",
                "method_memory_bytes", "method_info"):
        assert resumed.value(key) == full.value(key), key
