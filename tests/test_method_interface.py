"""The method interface as the trainer drives it: the factory, what each step hook receives, its precision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from methods_util import FAST_PARAMS, make_trainer, tiny_config

from sparsecl.errors import ConfigError, UserError
from sparsecl.methods import METHODS, build_method, method_for
from sparsecl.methods.ewc import EWC, EWCParams
from sparsecl.probes.posthoc import probe_run
from sparsecl.train.runner import run_experiment

torch.set_num_threads(1)


def _spy(tr: Any, hook: str, seen: list[tuple[torch.dtype, bool]]) -> None:
    """Wrap the method's ``hook`` so that every model forward inside it records (logits dtype, autocast on)."""
    inside = {"on": False}

    def record(mod: torch.nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        if inside["on"]:
            seen.append((out.dtype, torch.is_autocast_enabled("cpu")))

    tr.model.lm_head.register_forward_hook(record)
    original = getattr(tr.method, hook)

    def wrapped(*args: Any) -> None:
        inside["on"] = True
        try:
            original(*args)
        finally:
            inside["on"] = False

    setattr(tr.method, hook, wrapped)


@pytest.mark.parametrize("method,hook,density", [("sam", "after_backward", 1.0), ("agem", "after_backward", 1.0),
                                                 ("rigl", "after_step", 0.5)])
def test_step_hooks_forward_under_the_trainers_bf16_autocast(tmp_path: Path, method: str, hook: str,
                                                            density: float) -> None:
    """dtype=bfloat16: the extra forward passes of SAM (perturbed point), A-GEM (reference gradient, phase 2 on)
    and RigL (dense gradient) give bfloat16 logits, as the main training forward does."""
    cfg = tiny_config(method, FAST_PARAMS[method], density=density, steps=2, dtype="bfloat16",
                      schedule="arith,dyck")
    tr = make_trainer(cfg, tmp_path / "r")
    seen: list[tuple[torch.dtype, bool]] = []
    _spy(tr, hook, seen)
    tr.run()
    assert seen, f"{method}'s {hook} ran no forward pass"
    assert set(seen) == {(torch.bfloat16, True)}


def test_step_hooks_stay_float32_without_autocast(tmp_path: Path) -> None:
    """dtype=float32 (the default): the same SAM pass is float32 with autocast off."""
    tr = make_trainer(tiny_config("sam", FAST_PARAMS["sam"], steps=2, schedule="arith"), tmp_path / "r")
    seen: list[tuple[torch.dtype, bool]] = []
    _spy(tr, "after_backward", seen)
    tr.run()
    assert seen and set(seen) == {(torch.float32, False)}


def test_step_hooks_receive_the_batch_training_loss_got(tmp_path: Path) -> None:
    """after_backward gets the very (x, y) of training_loss; after_step gets them as a pair."""
    tr = make_trainer(tiny_config("naive", {}, steps=3, schedule="arith"), tmp_path / "r")
    m = tr.method
    got: dict[str, list[Any]] = {"loss": [], "backward": [], "step": []}
    loss, after_backward, after_step = m.training_loss, m.after_backward, m.after_step

    def training_loss(trainer: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        got["loss"].append((x, y))
        return loss(trainer, x, y)

    def backward_hook(trainer: Any, batch: Any) -> None:
        got["backward"].append(batch)
        after_backward(trainer, batch)

    def step_hook(trainer: Any, batch: Any) -> None:
        got["step"].append(batch)
        after_step(trainer, batch)

    m.training_loss, m.after_backward, m.after_step = training_loss, backward_hook, step_hook  # type: ignore[method-assign]
    tr.run()
    assert len(got["loss"]) == 3
    for (x, y), (bx, by), (sx, sy) in zip(got["loss"], got["backward"], got["step"], strict=True):
        assert bx is x and by is y and sx is x and sy is y


def test_build_method_parses_params_once_into_the_typed_dataclass_it_holds(tmp_path: Path) -> None:
    m = build_method("ewc", {"lam": 3.0})
    assert isinstance(m, EWC) and isinstance(m.params, EWCParams)
    assert (m.params.lam, m.params.gamma, m.params.labels) == (3.0, 1.0, "empirical")
    with pytest.raises(ConfigError, match="'method.name': unknown method 'magic'"):
        build_method("magic", {})
    with pytest.raises(ConfigError, match="'method.params.lam'"):
        build_method("ewc", {"lam": -1.0})
    with pytest.raises(ConfigError, match="'method.params.nope'"):
        build_method("ewc", {"nope": 1})
    cfg = tiny_config("replay", {"buffer_tokens": 17 * 3})
    assert method_for(cfg).params.buffer_tokens == 51  # also checked against the run: 3 sequences of 17 tokens
    tr = make_trainer(cfg, tmp_path / "r")
    assert type(tr.method.params).__name__ == "ReplayParams" and tr.method.params.buffer_tokens == 51


def test_a_method_that_grows_the_model_says_so_and_post_hoc_probes_refuse_it(tmp_path: Path) -> None:
    assert {n for n, m in METHODS.items() if m.grows_model} == {"expand"}
    cfg = tiny_config("expand", {}, steps=1, schedule="arith,dyck", probes=[])
    run_experiment([cfg], tmp_path, progress_bar=False)
    with pytest.raises(UserError, match="used method 'expand', whose checkpoints grow phase by phase"):
        probe_run(tmp_path / cfg.name, ["dormant"])


@pytest.mark.parametrize("method,params", [("expand", {"train": "new"}), ("lora", {"rank": 4})])
def test_frozen_parameters_carry_no_stale_gradient(tmp_path: Path, method: str, params: dict[str, Any]) -> None:
    """A method that freezes parameters between phases drops their .grad: the optimizer no longer clears it, and
    the trainer's grad-norm clipping runs over every parameter. Checked at every step of phase 2 and at the end."""
    tr = make_trainer(tiny_config(method, params, steps=2, schedule="arith,dyck"), tmp_path / "r")
    stale: list[str] = []
    after_backward = tr.method.after_backward

    def check(trainer: Any, batch: Any) -> None:
        stale.extend(n for n, p in trainer.model.named_parameters() if not p.requires_grad and p.grad is not None)
        after_backward(trainer, batch)

    tr.method.after_backward = check  # type: ignore[method-assign]
    tr.run()
    frozen = [n for n, p in tr.model.named_parameters() if not p.requires_grad]
    assert frozen, "phase 2 froze nothing"
    assert stale == []
    assert [n for n, p in tr.model.named_parameters() if not p.requires_grad and p.grad is not None] == []
