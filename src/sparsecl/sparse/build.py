"""The model every run starts from, built in one place so that probes can rebuild it exactly."""

from __future__ import annotations

import torch

from sparsecl.config import RunConfig
from sparsecl.model.gpt import GPT
from sparsecl.sparse.apply import LayerInfo, apply_sparsity
from sparsecl.sparse.matching import Matching, resolve_matching


def build_model(cfg: RunConfig, device: torch.device | str = "cpu") -> tuple[GPT, Matching, list[LayerInfo]]:
    """Resolve matching (params matching widens the model), seed the global RNG, build, attach masks.

    The same seed gives the same initial model in every process; callers that must not disturb the global
    RNG wrap this in ``torch.random.fork_rng``.
    """
    matching = resolve_matching(cfg.model, cfg.sparse)
    torch.manual_seed(cfg.seed)
    model = GPT(matching.model).to(device)
    layers = apply_sparsity(model, cfg.sparse, cfg.seed, cfg.train.batch_size * cfg.model.block_size)
    return model, matching, layers
