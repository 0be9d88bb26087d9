"""Device choice and timing fences shared by the benchmarks (CUDA work is asynchronous: time it fenced)."""

from __future__ import annotations

import torch


def pick_device(name: str) -> torch.device:
    """'cpu', 'cuda' or 'auto'; exits with one line when CUDA is asked for but absent."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is visible; use --device cpu")
    return torch.device(name)


def sync(device: torch.device) -> None:
    """Wait for queued kernels so that a wall-clock interval covers the work it launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(device: torch.device, threads: int) -> dict[str, object]:
    """What the numbers were measured on, for the JSON rows."""
    if device.type == "cuda":
        return {"device": torch.cuda.get_device_name(device), "torch": torch.__version__}
    return {"device": "cpu", "threads": threads, "torch": torch.__version__}
