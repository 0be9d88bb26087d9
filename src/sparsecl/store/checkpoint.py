"""Checkpoints: tensors in safetensors, everything else in a JSON state file.

``ckpt/phase-003.safetensors`` holds the model tensors (prefix ``model.``), which probes read;
``ckpt/phase-003.resume.safetensors`` the optimizer and method tensors (``optim.``, ``method.``), which only
a resume needs and which ``prune_resume_state`` may delete from superseded checkpoints;
``ckpt/phase-003.json`` holds step, data position, RNG states and the evaluation history.
``ckpt/latest.json`` names the newest checkpoint and is written last, so a crash at any moment leaves the
previous checkpoint intact. The JSON state records each tensor file's size and SHA-256 (``files``); every load
verifies them, so a truncated or altered file is refused instead of resumed. Nothing is ever unpickled.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sparsecl.errors import UserError
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
            st = {k: v.to(p.device) for k, v in split_prefix(tensors, names[id(p)] + ".").items()}
            if st:  # the fused AdamW keeps its step counter on the parameter's device too
                opt.state[p] = st


def phase_tag(phase: int) -> str:
    return f"phase-{phase:03d}"


def model_path(ckpt_dir: Path, tag: str) -> Path:
    """The model tensors of a checkpoint: always kept, read by the probes."""
    return ckpt_dir / f"{tag}.safetensors"


def resume_path(ckpt_dir: Path, tag: str) -> Path:
    """Optimizer and method tensors of a checkpoint: only a resume (and post-hoc update_ratio) reads them."""
    return ckpt_dir / f"{tag}.resume.safetensors"


def file_record(path: str | Path) -> dict[str, Any]:
    """Size and SHA-256 of a file, as recorded in a checkpoint's JSON state."""
    h = hashlib.sha256()  # hashlib.file_digest is Python 3.11+; the package supports 3.10
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
        return {"bytes": os.fstat(fh.fileno()).st_size, "sha256": h.hexdigest()}


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    record: dict[str, Any] = {}

    def write(tmp: str) -> None:
        save_file(tensors, tmp)
        record.update(file_record(tmp))  # hashed before the rename, so the record matches what lands

    atomic_write(path, write)
    return record


def save_checkpoint(ckpt_dir: Path, tag: str, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Tensor files first, then the JSON state with their checksums (``files``), then ``latest.json``."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    model = {k: v for k, v in flat.items() if k.startswith("model.")}
    rest = {k: v for k, v in flat.items() if not k.startswith("model.")}
    files = {model_path(ckpt_dir, tag).name: _save_tensors(model_path(ckpt_dir, tag), model),
             resume_path(ckpt_dir, tag).name: _save_tensors(resume_path(ckpt_dir, tag), rest)}
    atomic_write_json(ckpt_dir / f"{tag}.json", {**state, "files": files})
    atomic_write_json(ckpt_dir / "latest.json", {"tag": tag})


def prune_resume_state(ckpt_dir: Path) -> None:
    """Keep resume state only for the newest checkpoint: drop superseded step checkpoints whole and the
    optimizer and method tensors of superseded phase checkpoints (their models stay for the probes)."""
    latest = latest_tag(ckpt_dir)
    for path in ckpt_dir.glob("*.json"):
        tag = path.stem
        if tag in (latest, "latest"):
            continue
        resume_path(ckpt_dir, tag).unlink(missing_ok=True)
        if tag.startswith("step-"):
            model_path(ckpt_dir, tag).unlink(missing_ok=True)
            path.unlink()


def latest_tag(ckpt_dir: Path) -> str | None:
    p = ckpt_dir / "latest.json"
    if not p.is_file():
        return None
    return json.loads(p.read_text())["tag"]


_REDO = "restore the file from a copy, or start the run again in a new --out"


def read_state(ckpt_dir: Path, tag: str) -> dict[str, Any]:
    """A checkpoint's JSON state; a UserError (one line) if it is missing or damaged."""
    path = ckpt_dir / f"{tag}.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"checkpoint state '{path}' cannot be read ({type(e).__name__}); {_REDO}") from e
    if not isinstance(state, dict):
        raise UserError(f"checkpoint state '{path}' is not a JSON object; {_REDO}")
    return state


def verified_tensors(path: Path, state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Load a tensor file after checking it against the size and SHA-256 its checkpoint state recorded."""
    rec = state.get("files", {}).get(path.name)
    if rec is not None:
        got = file_record(path) if path.is_file() else {"bytes": -1}
        if got["bytes"] == -1:
            raise UserError(f"checkpoint file '{path}' is missing; {_REDO}")
        if got["bytes"] != rec["bytes"]:
            raise UserError(f"checkpoint file '{path}' is truncated or altered ({got['bytes']} bytes, "
                            f"{rec['bytes']} recorded); {_REDO}")
        if got["sha256"] != rec["sha256"]:
            raise UserError(f"checkpoint file '{path}' was modified or corrupted (SHA-256 differs from the "
                            f"recorded one); {_REDO}")
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise UserError(f"checkpoint file '{path}' cannot be read ({str(e).splitlines()[0][:120]}); "
                        f"{_REDO}") from e


def load_model_tensors(ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """The model tensors of a checkpoint, verified (what probes read)."""
    return verified_tensors(model_path(ckpt_dir, tag), read_state(ckpt_dir, tag))


def load_resume_tensors(ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """Optimizer and method tensors, verified; empty where pruned (checkpoint_resume_state=latest)."""
    path = resume_path(ckpt_dir, tag)
    return verified_tensors(path, read_state(ckpt_dir, tag)) if path.is_file() else {}


def load_checkpoint(ckpt_dir: Path, tag: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """All tensors of a checkpoint (model, and optimizer and method where still kept), verified, and its state."""
    state = read_state(ckpt_dir, tag)
    tensors = verified_tensors(model_path(ckpt_dir, tag), state)
    resume = resume_path(ckpt_dir, tag)
    if resume.is_file():
        tensors.update(verified_tensors(resume, state))
    return tensors, state


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose key starts with ``prefix``, keyed without it: the one way a saved state is split by owner."""
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}
