"""What a probe sees: the model at a checkpoint, fixed probe windows per domain, earlier checkpoints, caches.

The context is built once per probe point (a phase end, or every ``probe_every`` steps) by the trainer or
by `sparsecl probe`, and shared by all probes of that point so forwards and gradients are computed once.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast, overload

import torch
import torch.nn as nn

from sparsecl.config import RunConfig
from sparsecl.model.gpt import GPT, Block, lm_loss, trainable
from sparsecl.probes.linalg import centred_gram_norm, flatten, tensor_digest, update_digest
from sparsecl.rng import keyed_generator
from sparsecl.sparse.build import build_model
from sparsecl.store.checkpoint import load_model_tensors, model_path, model_tensors, phase_tag, split_prefix

Batch = tuple[torch.Tensor, torch.Tensor]


def init_state(cfg: RunConfig) -> dict[str, torch.Tensor]:
    """The run's initial model, rebuilt exactly as the trainer builds it (phase 0 has no checkpoint file).

    The global RNG is forked so rebuilding never disturbs training.
    """
    with torch.random.fork_rng(devices=[]):
        model, _, _ = build_model(cfg)
    return {k: v.detach().clone() for k, v in model_tensors(model).items()}


class PhaseStates:
    """Model tensors at the end of phase j, read from ckpt/phase-NNN.safetensors (j = 0: the rebuilt init)."""

    def __init__(self, ckpt_dir: Path, cfg: RunConfig, like: nn.Module | None = None) -> None:
        """With ``like``, a checkpoint whose tensors differ in name or shape from that model's (e.g. before
        the ``expand`` method grew it) counts as missing: the two are not comparable tensor by tensor."""
        self.ckpt_dir, self.cfg = ckpt_dir, cfg
        self._like = like
        self._cache: dict[int, dict[str, torch.Tensor] | None] = {}

    def __call__(self, phase: int) -> dict[str, torch.Tensor] | None:
        if phase not in self._cache:
            self._cache[phase] = self._load(phase)
        state = self._cache[phase]
        if state is not None and self._like is not None:
            now = {k: tuple(v.shape) for k, v in model_tensors(self._like).items()}
            if now != {k: tuple(v.shape) for k, v in state.items()}:
                return None
        return state

    def _load(self, phase: int) -> dict[str, torch.Tensor] | None:
        if phase == 0:
            return init_state(self.cfg)
        if not model_path(self.ckpt_dir, phase_tag(phase)).is_file():
            return None
        return split_prefix(load_model_tensors(self.ckpt_dir, phase_tag(phase)), "model.")


@contextmanager
def math_attention(model: nn.Module):  # noqa: ANN201 - a context manager
    """Force the math SDPA kernel: the fused kernels do not support double backward (HVPs)."""
    mods: list[Any] = [m for m in model.modules() if hasattr(m, "math_kernel")]
    old = [m.math_kernel for m in mods]
    for m in mods:
        m.math_kernel = True
    try:
        yield
    finally:
        for m, o in zip(mods, old, strict=True):
            m.math_kernel = o


def spread_rows(n: int, k: int) -> list[int]:
    """k row indices spread evenly over n ordered windows: the middle row of each of k equal groups.

    The validation windows are one per stratum of the stream in stream order, so these rows are themselves a
    stratified sample of the stream. With k > n the rows repeat cyclically (only tiny validation streams).
    """
    if k <= n:
        return [(2 * i + 1) * n // (2 * k) for i in range(k)]
    return [i % n for i in range(k)]


@dataclass
class Features:
    """Representations on one domain's probe tokens, first position of each sequence dropped: (N, .) each."""

    hidden: list[torch.Tensor]  # residual stream after the embedding and after every block
    final: torch.Tensor  # after the final LayerNorm
    mlp: list[torch.Tensor]  # MLP hidden units after the nonlinearity, per block
    loss: float | None = None
    """Mean next-token loss on the probe batch from the same forward (given targets): bitwise what
    ``model.loss(x, y)`` returns under no_grad, so probes that need it reuse it instead of a second forward."""
    final_all: torch.Tensor | None = None
    """(B, T, C) after the final LayerNorm at every position, as computed: ``model.lm_head(final_all)`` is bitwise
    the logits ``model(x)`` returns, so probes that need logits (forgetting_kl) reuse this forward."""

    gram_norms: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    """Layer -> CKA normaliser of ``hidden[layer]``, filled on first use (kept with the features, so the next
    point's comparison with this model does not recompute it)."""

    def hidden_gram_norm(self, layer: int) -> torch.Tensor:
        if layer not in self.gram_norms:
            self.gram_norms[layer] = centred_gram_norm(self.hidden[layer])
        return self.gram_norms[layer]

    def nbytes(self) -> int:
        ts = [*self.hidden, self.final, *self.mlp, *([] if self.final_all is None else [self.final_all])]
        return sum(t.numel() * t.element_size() for t in ts)


@torch.no_grad()
def collect_features(model: GPT, x: torch.Tensor, y: torch.Tensor | None = None) -> Features:
    acts: list[torch.Tensor] = []
    hooks = [b.mlp.down.register_forward_pre_hook(lambda _m, inp: acts.append(inp[0].detach()))
             for b in cast("list[Block]", model.blocks)]
    try:
        hs = model.hidden_states(x)
    finally:
        for h in hooks:
            h.remove()
    final = model.ln_f(hs[-1])
    loss = None
    if y is not None:  # the rest of GPT.loss: same ops in the same order as model(x) then cross entropy
        logits = model.lm_head(final)
        loss = float(lm_loss(logits, y))

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].reshape(-1, t.shape[-1]).float()

    return Features([flat(h) for h in hs], flat(final), [flat(a) for a in acts], loss, final)


def model_digest(model: nn.Module) -> str:
    """A content hash of a model: its class, every parameter and buffer (masks and derived sparse indices too) by
    name, and its device. Two models with equal digests compute bitwise the same forward."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(model).__qualname__.encode())
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        h.update(f"{name}@{t.device}".encode())
        update_digest(h, t)
    return h.hexdigest()


class FeatureStore:
    """Feature forwards kept across probe points, keyed by the content of the model and of the probe batch.

    The checkpoint of phase j holds bitwise the model probed at the end of phase j, so at the next point the
    previous phase's features (repr_drift, lmc's endpoint, forgetting_kl), and later the learned phase's, are the
    ones already computed: reusing them is exact and saves a forward per domain and phase. Least recently used
    entries leave beyond ``max_bytes``; an entry larger than that is not kept (large models recompute)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, ...], Features] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple[str, ...], compute: Callable[[], Features]) -> Features:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        f = compute()
        size = f.nbytes()
        if size <= self.max_bytes:
            while self._items and self._bytes + size > self.max_bytes:
                self._bytes -= self._items.popitem(last=False)[1].nbytes()
            self._items[key] = f
            self._bytes += size
        return f

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0


FEATURES = FeatureStore(max_bytes=256 * 2 ** 20)
"""The process's store: 256 MB holds every phase's features of a quickstart-size model on five domains (~35 MB a
phase); at 100M parameters one domain's features exceed it and are recomputed as before."""


@dataclass
class ProbeContext:
    model: GPT
    """The model being probed (probes never change it)."""
    cfg: RunConfig
    windows: dict[str, Batch]
    """Fixed validation windows per domain (CPU), in stream order; probe batches are rows spread over them."""
    phase: int
    """Phase being probed (1-based); at a phase end it is complete."""
    step: int
    current: list[str]
    """Domains scheduled in this phase (the 'new' domains)."""
    learned_phase: dict[str, int]
    """Domain -> phase in which it was first trained, for domains trained up to this phase."""
    states: Callable[[int], dict[str, torch.Tensor] | None]
    """Model tensors at the end of phase j (0 = init), or None if that checkpoint is missing."""
    device: torch.device
    phase_step: int = 0
    """Steps taken in this phase so far (the phase's length at its end)."""
    optim_state: Callable[[], dict[str, torch.Tensor]] | None = None
    """AdamW state by '<param name>.<exp_avg|exp_avg_sq|step>', or None when unknown."""
    cache: dict[Any, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ domains and batches
    @property
    def old(self) -> list[str]:
        """Domains learned in an earlier phase and not trained in this one."""
        return [d for d, t in self.learned_phase.items() if t < self.phase and d not in self.current]

    @property
    def seen(self) -> list[str]:
        return list(self.learned_phase)

    def batch(self, domain: str, n: int) -> Batch:
        """n of the domain's validation windows (all, if it has fewer), spread evenly over its validation stream."""
        x, y = self.windows[domain]
        rows = spread_rows(len(x), min(n, len(x)))
        return x[rows].to(self.device), y[rows].to(self.device)

    def probe_batch(self, domain: str) -> Batch:
        """The fixed probe batch: enough windows for >= 4*d_model tokens (effective rank), at least batch_size."""
        T = self.cfg.model.block_size
        need = math.ceil(4 * self.cfg.model.d_model / max(1, T - 1))
        return self.batch(domain, max(self.cfg.probe.batch_size, need))

    def mixed_batch(self, domains: list[str], n: int) -> Batch:
        """n windows taken round-robin from the domains' validation windows (a fixed mixture), each domain's
        share spread evenly over its validation stream."""
        rows = {d: spread_rows(len(self.windows[d][0]), len(range(k, n, len(domains))))
                for k, d in enumerate(domains)}
        xs, ys = [], []
        for i in range(n):
            d = domains[i % len(domains)]
            x, y = self.windows[d]
            j = rows[d][i // len(domains)]
            xs.append(x[j])
            ys.append(y[j])
        return torch.stack(xs).to(self.device), torch.stack(ys).to(self.device)

    # ------------------------------------------------------------------ models at other checkpoints
    def model_at(self, phase: int) -> GPT | None:
        """A copy of the model holding the tensors of the end of ``phase`` (cached), or None if missing."""
        key = ("model", phase)
        if key not in self.cache:
            state = self.states(phase)
            if state is None:
                self.cache[key] = None
            else:
                m = copy.deepcopy(self.model)
                m.load_state_dict({k: v.to(self.device) for k, v in state.items()}, strict=False)
                m.eval()
                self.cache[key] = m
        return self.cache[key]

    def init_model(self) -> GPT:
        """The run's initial model, rebuilt from the config (also when a method has since grown the model)."""
        key = ("init_model",)
        if key not in self.cache:
            with torch.random.fork_rng(devices=[]):
                m, _, _ = build_model(self.cfg, self.device)
            self.cache[key] = m.eval()
        return self.cache[key]

    def prev_phase(self) -> int:
        """The checkpoint this probe point is compared with: the end of the previous phase."""
        return self.phase - 1

    # ------------------------------------------------------------------ cached forwards and gradients
    @overload
    def features(self, domain: str, phase: None = None) -> Features: ...

    @overload
    def features(self, domain: str, phase: int) -> Features | None: ...

    def features(self, domain: str, phase: int | None = None) -> Features | None:
        """Representations of the current model (phase None) or of the end of ``phase`` on ``domain``."""
        key = ("features", phase, domain)
        if key not in self.cache:
            m = self.model if phase is None else self.model_at(phase)
            if m is None:
                self.cache[key] = None
            else:
                x, y = self.probe_batch(domain)
                mode = "train" if m.training else "eval"  # dropout, if any, acts in train mode only
                self.cache[key] = FEATURES.get((self.digest(phase), tensor_digest(x, y), mode),
                                               lambda: collect_features(m, x, y))
        return self.cache[key]

    def digest(self, phase: int | None = None) -> str:
        """``model_digest`` of the current model (phase None) or of the end of ``phase`` (which must exist)."""
        key = ("digest", phase)
        if key not in self.cache:
            m = self.model if phase is None else self.model_at(phase)
            assert m is not None
            self.cache[key] = model_digest(m)
        return self.cache[key]

    def features_loss(self, domains: list[str], phase: int | None = None) -> dict[str, float] | None:
        """Probe-batch loss per domain of the current model (phase None) or of the end of ``phase``, from the
        cached feature forwards; None if that checkpoint is missing."""
        feats = {d: self.features(d, phase) for d in domains}
        if any(f is None or f.loss is None for f in feats.values()):
            return None
        return {d: f.loss for d, f in feats.items() if f is not None and f.loss is not None}

    def params(self) -> list[nn.Parameter]:
        return [p for _, p in trainable(self.model)]

    def grad(self, domains: tuple[str, ...]) -> torch.Tensor:
        """Flat gradient of the mean loss on the probe batches of ``domains`` (equal-weight mixture)."""
        key = ("grad", domains)
        if key not in self.cache:
            if len(domains) > 1:
                self.cache[key] = sum(self.grad((d,)) for d in domains) / len(domains)
            else:
                params = self.params()
                x, y = self.probe_batch(domains[0])
                with torch.enable_grad():
                    loss = self.model.loss(x, y)
                    g = torch.autograd.grad(loss, params, allow_unused=True)
                self.cache[key] = flatten(list(g), params).detach()
        return self.cache[key]

    def generator(self, *key: object) -> torch.Generator:
        """A CPU generator keyed by (seed, probe key, phase, step): probes are reproducible and touch no global RNG."""
        return keyed_generator(self.cfg.seed, "probe", *key, self.phase, self.step)
