"""Checkpoints: tensors in safetensors, everything else in a JSON state file.

``ckpt/phase-003.safetensors`` holds model, optimizer and method tensors under the prefixes ``model.``,
``optim.`` and ``method.``; ``ckpt/phase-003.json`` holds step, data position, RNG states and the
evaluation history. ``ckpt/latest.json`` names the newest pair and is written last, so a crash at any
moment leaves the previous checkpoint intact. Nothing is ever unpickled.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sparsecl.store.atomic import atomic_write, atomic_write_json


def rng_state() -> dict[str, str]:
    out = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
    return out


def set_rng_state(state: dict[str, str]) -> None:
    raw = base64.b64decode(state["torch"])
    torch.set_rng_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["cuda"])), dtype=torch.uint8))


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict without aliases (tied embeddings are stored once)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in model.state_dict().items():
        if v is None:
            continue
        key = v.data_ptr() if v.numel() else id(v)
        if key in seen:
            continue
        seen.add(key)
        out[k] = v
    return out


def optimizer_tensors(opt: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, torch.Tensor]:
    """Per-parameter optimizer state keyed by parameter name (stable across processes)."""
    out = {}
    for p, st in opt.state.items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            out[f"{names[id(p)]}.{k}"] = t
    return out


def convert_sparse_state(tensors: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Make per-parameter optimizer state saved by one sparse backend usable by the other.

    The masked backend keys a layer's state as '<module>.weight.<k>' (dense (out, in)), the csr backend as
    '<module>.values.<k>' (1-D, row-major over the mask). Missing forms are derived with the layer's mask:
    gather the kept entries, or scatter them into zeros (the moments off the mask are zero by construction).
    """
    out = dict(tensors)
    for name, mod in model.named_modules():
        mask = getattr(mod, "mask", None)
        if mask is None or not hasattr(mod, "dense_weight"):
            continue
        mask = mask.to("cpu")
        have, want = ("weight", "values") if hasattr(mod, "values") else ("values", "weight")
        src = f"{name}.{have}."
        for key, t in tensors.items():
            if not key.startswith(src):
                continue
            dst = f"{name}.{want}.{key[len(src):]}"
            if dst in out:
                continue
            t = t.to("cpu")
            if t.dim() == 0:
                out[dst] = t
            elif want == "values" and t.shape == mask.shape:
                out[dst] = t[mask]
            elif want == "weight" and t.numel() == int(mask.sum()):
                out[dst] = torch.zeros(mask.shape, dtype=t.dtype).masked_scatter(mask, t)
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, names: dict[int, str], tensors: dict[str, torch.Tensor],
                           model: torch.nn.Module | None = None) -> None:
    if model is not None:
        tensors = convert_sparse_state(tensors, model)
    for group in opt.param_groups:
        for p in group["params"]:
            prefix = names[id(p)] + "."
            st = {k[len(prefix):]: v.to(p.device) for k, v in tensors.items() if k.startswith(prefix)}
            if st:  # the fused AdamW keeps its step counter on the parameter's device too
                opt.state[p] = st


def save_checkpoint(ckpt_dir: Path, tag: str, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(ckpt_dir / f"{tag}.safetensors", lambda tmp: save_file(flat, tmp))
    atomic_write_json(ckpt_dir / f"{tag}.json", state)
    atomic_write_json(ckpt_dir / "latest.json", {"tag": tag})


def latest_tag(ckpt_dir: Path) -> str | None:
    p = ckpt_dir / "latest.json"
    if not p.is_file():
        return None
    return json.loads(p.read_text())["tag"]


def load_checkpoint(ckpt_dir: Path, tag: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = load_file(str(ckpt_dir / f"{tag}.safetensors"))
    state = json.loads((ckpt_dir / f"{tag}.json").read_text())
    return tensors, state


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}
