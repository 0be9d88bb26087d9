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


VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile",
                "asimd", "sve")
"""/proc/cpuinfo flags that decide which vector kernels (ours, PyTorch's, the tokenizers') can run."""


def cpu_vector_flags() -> dict[str, object]:
    """The CPU's vector extensions and the kernel level PyTorch dispatches to on it."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_flags": [f for f in VECTOR_FLAGS if f in flags]}


def describe(device: torch.device, threads: int) -> dict[str, object]:
    """What the numbers were measured on, for the JSON rows."""
    if device.type == "cuda":
        return {"device": torch.cuda.get_device_name(device), "torch": torch.__version__}
    return {"device": "cpu", "threads": threads, "torch": torch.__version__, **cpu_vector_flags()}
