"""Data-parallel (DDP) and sharded (FSDP2) training under torchrun, applied from outside the model.

``torchrun --nproc-per-node N -m sparsecl run ...`` starts N processes; each builds the same model from the
same seed (masks included, proven by a checksum all-reduce), then ``Parallel.wrap`` applies DDP or FSDP2
(``fully_shard`` per block, then the root), as torchtitan's parallelize step does. The model class knows
nothing about it. gloo on CPU, nccl on CUDA.

``train.batch_size`` is the global batch of one optimizer step. A step of ``grad_accum`` micro-steps gives
rank r of micro-step m the rows ``rows(B, m)`` of the batch every rank draws identically, so one process and
N processes train on the same examples. Each rank's loss is weighted by its share of the step's target
tokens times N (DDP and FSDP average over ranks), so the summed gradient equals the one-process gradient of
the whole batch's mean loss, also when shares hold different token counts (SFT prompt masking).

Under DDP the model stays a plain module between training steps: the wrapper's forward hooks are attached
only while a training step computes its loss (``step_scope``), so evaluation, probes, teachers (deep copies)
and a method's phase work run locally and identically on every rank without collectives. Under FSDP every
forward is collective, so every rank runs every evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

from sparsecl.errors import ConfigError
from sparsecl.store.checkpoint import model_tensors

DDP_METHODS = ("naive", "joint", "ewc", "si", "lwf")
"""Methods whose per-step work is one forward of the token batch plus rank-identical penalties or teachers:
they train under DDP with results equal to one process. Others refuse (``check_config``)."""
FSDP_METHODS = ("naive", "joint", "ewc", "si")
"""Methods that never copy or rebuild the model (FSDP's sharded parameters cannot be deep-copied)."""


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """Whether this process writes outputs and prints reports (rank 0, or the only process)."""
    return env_world()[0] == 0


def check_config(cfg: Any, world: int | None = None) -> None:
    """Refuse what this world size cannot train exactly, before anything is written (raises ConfigError)."""
    world = env_world()[1] if world is None else world
    t = cfg.train
    per = world * t.grad_accum
    if t.batch_size % per:
        raise ConfigError("train.batch_size", f"is {t.batch_size}, not divisible by ranks ({world}) x "
                          f"train.grad_accum ({t.grad_accum}) = {per}", "choose a multiple of it")
    if t.grad_accum > 1 and any(s.objective == "rl" for s in cfg.schedule):
        raise ConfigError("train.grad_accum", "must be 1 with rl phases (GRPO steps are not split)")
    if t.grad_accum > 1 and cfg.method.name not in DDP_METHODS:
        raise ConfigError("train.grad_accum", f"must be 1 with method '{cfg.method.name}': its step hooks work on "
                          "the whole step's batch, which accumulation splits",
                          f"use one of {', '.join(DDP_METHODS)}, or train.grad_accum=1")
    if world == 1:
        return
    if any(s.objective == "rl" for s in cfg.schedule):
        raise ConfigError("schedule", f"has rl phases, which do not train on {world} ranks yet",
                          "run rl schedules without torchrun")
    allowed = FSDP_METHODS if t.parallel == "fsdp" else DDP_METHODS
    if cfg.method.name not in allowed:
        raise ConfigError("method.name", f"'{cfg.method.name}' does not train under {t.parallel.upper()} on "
                          f"{world} ranks", f"use one of {', '.join(allowed)}, or run without torchrun")
    if t.parallel == "fsdp" and cfg.probes:
        raise ConfigError("probes", "probes copy the model, which FSDP's sharded parameters do not allow",
                          "set probes=[] (probe the saved checkpoints later with `sparsecl probe`), or use "
                          "train.parallel=ddp")


def init_process_group(device: torch.device) -> None:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU) once; a no-op in a single process."""
    if env_world()[1] > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def rank_device(device: torch.device) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK under torchrun on CUDA, else ``device``."""
    rank, world, local = env_world()
    if device.type == "cuda" and world > 1:
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


def mask_checksum(model: nn.Module) -> torch.Tensor:
    """Two int64 numbers that differ when any mask differs: kept count and a position-weighted index sum."""
    total = torch.zeros(2, dtype=torch.int64)
    for m in model.modules():
        mask = getattr(m, "mask", None) if hasattr(m, "dense_weight") else None
        if mask is None:
            continue
        idx = mask.detach().reshape(-1).nonzero().reshape(-1).to("cpu", torch.int64)
        total += torch.stack([idx.numel() + torch.zeros((), dtype=torch.int64),
                              (idx * (idx % 1_000_003 + 1)).sum()])
    return total


@dataclass
class Parallel:
    """This process's place in the job and the wrapper applied to its model."""

    rank: int = 0
    world: int = 1
    mode: str = "ddp"
    accum: int = 1
    ddp: Any = None
    """The DistributedDataParallel wrapper (DDP mode, world > 1)."""
    fsdp: bool = False
    """Whether the model's parameters are sharded (FSDP mode, world > 1)."""
    _sync: bool = field(default=True, repr=False)

    @classmethod
    def from_env(cls, mode: str, accum: int) -> Parallel:
        rank, world, _ = env_world()
        return cls(rank, world, mode, accum)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    # ------------------------------------------------------------------ checks and reductions
    def check_masks(self, model: nn.Module) -> None:
        """All-reduce the mask checksum (min and max): every rank must have drawn the same masks."""
        if not self.distributed:
            return
        local = mask_checksum(model)
        lo, hi = local.clone(), local.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        if not torch.equal(lo, hi):
            raise RuntimeError(f"masks differ between ranks (checksums from {lo.tolist()} to {hi.tolist()}); "
                               f"every rank must build the same model from the same config and seed")

    def sums(self, *values: float) -> list[float]:
        """Sums of a few numbers over ranks, in one all-reduce (float64; on the GPU for nccl)."""
        if not self.distributed:
            return list(values)
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor(values, dtype=torch.float64, device=dev)
        dist.all_reduce(t)
        return [float(v) for v in t.tolist()]

    def summary(self) -> dict[str, Any]:
        """How the run was trained, for summary.json (a resume onto another world size records the last one)."""
        return {"ranks": self.world, "parallel": self.mode if self.distributed else "none", "grad_accum": self.accum}

    # ------------------------------------------------------------------ batches
    def rows(self, batch: int, micro: int) -> slice:
        """Rows of a global batch that this rank trains on in micro-step ``micro``."""
        share = batch // (self.accum * self.world)
        start = (micro * self.world + self.rank) * share
        return slice(start, start + share)

    def micro_rows(self, batch: int, micro: int) -> slice:
        """Rows of micro-step ``micro`` over all ranks together."""
        n = batch // self.accum
        return slice(micro * n, (micro + 1) * n)

    # ------------------------------------------------------------------ wrapping
    def wrap(self, model: nn.Module, device: torch.device) -> None:
        """Apply DDP or FSDP2 to ``model`` (in place for FSDP); a no-op in a single process. Call again after a
        method replaced parameters (DDP only)."""
        if not self.distributed:
            return
        if self.mode == "fsdp":
            if self.fsdp:
                return
            for block in model.blocks:  # type: ignore[union-attr]
                fully_shard(block)
            fully_shard(model)
            self.fsdp = True
            return
        ids = [device.index] if device.type == "cuda" else None
        # masks are checked equal at start and are no parameters: nothing to broadcast per forward
        self.ddp = DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)

    def set_sync(self, sync: bool, model: nn.Module) -> None:
        """Whether the next backward reduces gradients over ranks (off for all but the last micro-step)."""
        self._sync = sync
        if self.fsdp:
            model.set_requires_gradient_sync(sync)  # type: ignore[operator]

    def reshard(self, model: nn.Module) -> None:
        """Free the gathered parameters an FSDP forward without backward (evaluation) leaves behind; otherwise
        the root's next forward reuses them instead of gathering the updated shards."""
        if self.fsdp:
            for m in model.modules():
                if isinstance(m, FSDPModule):
                    m.reshard()

    @contextmanager
    def step_scope(self, model: nn.Module) -> Iterator[None]:
        """While a training step computes its loss, forwards of ``model`` go through DDP's reducer (the same
        pre/post-forward steps as DDP.forward and composable ``replicate``); outside it the model is local."""
        ddp = self.ddp
        if ddp is None:
            yield
            return

        def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            ddp.require_backward_grad_sync = self._sync
            return ddp._pre_forward(*args, **kwargs)

        def post(module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
            return ddp._post_forward(out)

        hooks = [model.register_forward_pre_hook(pre, with_kwargs=True), model.register_forward_hook(post)]
        try:
            yield
        finally:
            for h in hooks:
                h.remove()

    # ------------------------------------------------------------------ full tensors (FSDP)
    def full(self, t: torch.Tensor) -> torch.Tensor:
        """A full local tensor of a (possibly sharded) tensor; collective under FSDP."""
        return t.full_tensor() if isinstance(t, DTensor) else t

    def shard_like(self, full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        """``full`` placed like ``param`` (its shard on this rank when ``param`` is sharded)."""
        if isinstance(param, DTensor) and full.shape == param.shape:
            return distribute_tensor(full.to(param.device), param.device_mesh, param.placements)
        return full.to(param.device)

    def model_tensors(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's tensors as one process holds them (tied weights once); gathered under FSDP."""
        if not self.fsdp:
            return model_tensors(model)
        out: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for k, v in model.state_dict(keep_vars=True).items():  # parameters themselves: tied ones share an id
            if v is None or id(v) in seen:
                continue
            seen.add(id(v))
            out[k] = self.full(v.detach())
        return out

    def load_optimizer(self, opt: torch.optim.Optimizer, names: dict[int, str],
                       tensors: dict[str, torch.Tensor]) -> None:
        """Per-parameter state saved full (``checkpoint.optimizer_tensors``), placed like each parameter."""
        for group in opt.param_groups:
            for p in group["params"]:
                prefix = names[id(p)] + "."
                st = {k[len(prefix):]: self.shard_like(v, p) for k, v in tensors.items() if k.startswith(prefix)}
                if st:
                    opt.state[p] = st


class NoIndex:
    """What ranks other than 0 hold instead of the SQLite index: every write is rank 0's."""

    def __getattr__(self, name: str) -> Any:
        if name in ("set_run", "add_evals", "truncate_evals", "add_probes", "forget_run", "truncate_probes",
                    "close"):
            return lambda *a, **k: None
        raise AttributeError(f"only rank 0 reads the index ({name})")


def start(device: torch.device) -> None:
    """Join torchrun's process group before the checks, so that ranks can wait for each other."""
    if env_world()[1] > 1:
        init_process_group(rank_device(device))


def barrier() -> None:
    """Every rank has passed the checks (and loaded its data) before rank 0 writes or takes a lock."""
    if dist.is_initialized():
        dist.barrier()
