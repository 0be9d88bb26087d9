"""The trainer: runs a schedule of phases, evaluates every domain along the way, checkpoints, resumes.

One ``Trainer`` is one run. Its loop is short on purpose; what differs between continual-learning methods
lives in the method's hooks (``sparsecl.methods.base``), and what differs between dense and sparse models
was settled when the masks were attached.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from sparsecl.config import RunConfig, dump_yaml, to_dict
from sparsecl.data.domains import Domain
from sparsecl.data.inventory import data_summary
from sparsecl.data.stream import domain_val_windows, sample_windows
from sparsecl.data.tasks import TASKS, exact_match
from sparsecl.data.tokenizer import TOKENIZER_FILE
from sparsecl.errors import Diverged, UserError
from sparsecl.methods import Method, build_method
from sparsecl.metrics.evaluate import evaluate_domains
from sparsecl.metrics.summary import build_summary
from sparsecl.model.gpt import GPT, param_names
from sparsecl.model.optim import build_optimizer, lr_at
from sparsecl.probes.run import probe_trainer
from sparsecl.rng import keyed_generator
from sparsecl.sparse.apply import structural_counts
from sparsecl.sparse.build import build_model
from sparsecl.sparse.report import model_backend_reasons, model_backends, model_masks, topology_report
from sparsecl.store import checkpoint as ck
from sparsecl.store.atomic import atomic_write_json, atomic_write_text, remove_stale_temps
from sparsecl.store.index import Index
from sparsecl.store.lock import run_lock
from sparsecl.store.record import RunSummary, RunTotals
from sparsecl.train.objectives import OBJECTIVES, Objective, StepLoss
from sparsecl.train.objectives.sampling import greedy_accuracy
from sparsecl.train.parallel import Parallel, env_world, init_process_group, rank_device
from sparsecl.train.preflight import check_device
from sparsecl.train.throughput import apply_throughput
from sparsecl.train.tracking import Tracker, open_tracker


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device(name)
    return torch.device(name)


@dataclass
class Progress:
    """Where a run stands: ``phase`` phases are complete, plus ``phase_step`` steps of the next one."""

    phase: int = 0
    phase_step: int = 0
    step: int = 0
    train_seconds: float = 0.0
    train_tokens: int = 0
    eval_seconds: float = 0.0
    probe_seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    wall_seconds: float = 0.0
    """Wall time spent up to the last checkpoint (a resumed run adds its own)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    probes: list[dict[str, Any]] = field(default_factory=list)
    objective_log: list[dict[str, Any]] = field(default_factory=list)
    """Per-step numbers of non-LM objectives (GRPO: reward, KL, entropy, completion length)."""


SPLIT_TIMINGS = ("eval_seconds", "probe_seconds", "checkpoint_seconds")
"""Where a run's wall time goes besides training; summed in Progress, reported in the summary."""
RESTORED_TIMINGS = (*SPLIT_TIMINGS, "wall_seconds")


class Trainer:
    def __init__(self, cfg: RunConfig, domains: dict[str, Domain], run_dir: Path, index: Index,
                 run_id: str, progress_bar: bool = True) -> None:
        self.cfg, self.domains, self.run_dir, self.index, self.run_id = cfg, domains, run_dir, index, run_id
        self.progress_bar = progress_bar
        self.t_start, self.wall_before = time.perf_counter(), 0.0  # wall clock of this process; run() resets
        self.parallel = Parallel.from_env(cfg.train.parallel, cfg.train.grad_accum)  # torchrun ranks, if any
        self.device = rank_device(pick_device(cfg.device))
        init_process_group(self.device)
        if self.device.type == "cpu":
            torch.set_num_threads(cfg.threads)
        self.model, self.matching, self.layers = build_model(cfg, self.device)
        self.parallel.check_masks(self.model)
        self._micro: int | None = None  # inside a training step: the micro-step whose rows batches take
        self._loss_weight = 1.0  # this rank's share of the step's target tokens x ranks (set by share())
        self.summary: RunSummary | None = None  # built once, when the last phase ends
        self.param_names = param_names(self.model)
        self.method: Method = build_method(cfg.method.name, cfg.method.params)
        self.optimizer: torch.optim.Optimizer | None = None
        self.progress = Progress()
        self.val = domain_val_windows({n: d.val for n, d in domains.items()}, cfg.seed, cfg.eval.sample_tokens,
                                      cfg.model.block_size)
        self.tokenizer = next(iter(domains.values())).tokenizer
        self.val_bytes = {n: self.tokenizer.target_bytes(y) for n, (_, y) in self.val.items()}
        self.phases = [p.domains for p in cfg.schedule]
        self.scheduled = [d for d in cfg.domain_names if any(d in p for p in self.phases)]
        self.ckpt_dir = run_dir / "ckpt"
        self.current_domains: list[str] = []
        self.tracker: Tracker | None = None  # optional TensorBoard / W&B / MLflow (cfg.log)
        self.objective: Objective = OBJECTIVES["lm"]()
        self._objective_state: dict[str, torch.Tensor] = {}  # restored mid-phase, handed to the phase's objective
        self.task_val = {n: d.pairs["val"][:cfg.eval.task_prompts] for n, d in domains.items()
                         if d.pairs and cfg.eval.task_prompts}

    # ------------------------------------------------------------------ pieces methods may call
    def make_optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(self.model, self.cfg.train)

    def autocast(self) -> torch.autocast:
        """Mixed precision for training forward passes when dtype=bfloat16; evaluation stays float32. The step
        (the objective's loss and the method's step hooks) runs under it; phase hooks and probes do not."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.dtype == "bfloat16")

    def model_changed(self) -> None:
        """Call after adding or replacing parameters or masks: refreshes names, rebuilds the optimizer and
        rewrites topology.json, so that it describes the connectivity the next checkpoints hold."""
        self.param_names = param_names(self.model)
        self.optimizer = self.make_optimizer()
        self._write_topology()

    def masks_changed(self) -> None:
        """Call after a method moved connections in place (same parameters, optimizer state already remapped,
        as RigL does): only rewrites topology.json."""
        self._write_topology()

    def _topology_report(self) -> dict[str, Any]:
        cfg = self.cfg
        targets = {li.name: li.density if li.target is None else li.target for li in self.layers}
        report = topology_report(model_masks(self.model, cfg.sparse), cfg.sparse, targets,
                                 model_backends(self.model, cfg.sparse), model_backend_reasons(self.model, cfg.sparse))
        extra = self.method.topology_info()
        if extra:
            report["method"] = {"name": self.method.name, **extra}
        return report

    def _write_topology(self) -> None:
        if not self.parallel.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run_dir / "topology.json", self._topology_report())

    def batch(self, domains: list[str], *key: object) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch from the mixture of ``domains``, keyed so that resumes draw the same one."""
        gen = keyed_generator(self.cfg.seed, *key)
        x, y = sample_windows([self.domains[d].train for d in domains], self.cfg.train.batch_size,
                              self.cfg.model.block_size, gen)
        x, y = self.share(x, y)
        return x.to(self.device), y.to(self.device)

    def share(self, x: torch.Tensor, y: torch.Tensor, ignore: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
        """Inside a training step, this rank's rows of the current micro-step of a global batch (targets equal
        to ``ignore`` do not count as tokens); elsewhere (methods' phase work, probes) the whole batch."""
        if self._micro is None:
            return x, y
        rows = self.parallel.rows(len(x), self._micro)
        total = int((y != ignore).sum())
        local = int((y[rows] != ignore).sum())
        self._loss_weight = local / max(total, 1) * self.parallel.world
        return x[rows], y[rows]

    def evaluate(self) -> dict[str, dict[str, float]]:
        return evaluate_domains(self.model, self.val, self.cfg.eval.batch_size, self.device, self.val_bytes)

    def task_accuracy(self) -> dict[str, float]:
        """Greedy exact-match accuracy on each task domain's validation prompts."""
        new = self.cfg.rl.completion_length
        return {n: greedy_accuracy(self.model, pairs, TASKS[n].reward if n in TASKS else exact_match,
                                   self.cfg.model.block_size, new, self.tokenizer, self.cfg.eval.batch_size)
                for n, pairs in self.task_val.items()}

    # ------------------------------------------------------------------ ranks and throughput (train/parallel.py)
    def _parallelize(self) -> None:
        """Activation checkpointing and compile per block, then DDP or FSDP2 over torchrun's ranks; after a
        restore, so that checkpoints always load into the plain model."""
        apply_throughput(self.model, self.cfg.train)
        par = self.parallel
        saved = None
        if par.mode == "fsdp" and par.distributed and self.optimizer is not None:  # moments of a restore
            saved = ck.optimizer_tensors(self.optimizer, self.param_names)
        par.wrap(self.model, self.device)
        if par.fsdp:  # sharded parameters are new objects
            self.param_names = {id(p): n for n, p in self.model.named_parameters()}
            if saved is not None:
                self.optimizer = self.make_optimizer()
                par.load_optimizer(self.optimizer, self.param_names, saved)

    def _plain_model(self) -> GPT:
        """The model as one process holds it (for the summary): under FSDP a full copy gathered from the shards."""
        if not self.parallel.fsdp:
            return self.model
        with torch.random.fork_rng(devices=[]):
            plain, _, _ = build_model(self.cfg, "cpu")
        plain.load_state_dict(self.parallel.model_tensors(self.model), strict=False)
        return plain

    def _forward_backward(self, domains: list[str], phase: int, step: int) -> tuple[StepLoss, torch.Tensor]:
        """Gradients of one optimizer step: ``grad_accum`` micro-steps, each on this rank's rows (token batches;
        an rl step is one piece), gradients reduced over ranks after the last. Returns the last micro-step's
        StepLoss (tokens: summed over micro-steps) and this rank's share-weighted loss sum."""
        par = self.parallel
        micros = 1 if self.objective.name == "rl" else par.accum
        total = torch.zeros((), device=self.device)
        tokens = 0
        for m in range(micros):
            par.set_sync(m == micros - 1, self.model)
            self._micro, self._loss_weight = (None if self.objective.name == "rl" else m), 1.0
            try:
                with par.step_scope(self.model), self.autocast():
                    out = self.objective.step_loss(self, domains, phase, step)
            finally:
                self._micro = None
            loss = out.loss if self._loss_weight == 1.0 else out.loss * self._loss_weight
            loss.backward()
            total += loss.detach().float()
            tokens += out.tokens
        out.tokens = tokens
        return out, total

    # ------------------------------------------------------------------ the loop
    def _sync(self) -> None:
        """CUDA runs asynchronously: wait for queued kernels before reading a clock."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def _timed(self, key: str) -> Iterator[None]:
        """Add the block's wall time to ``progress.<key>``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            setattr(self.progress, key, getattr(self.progress, key) + time.perf_counter() - t0)

    def _record(self, phase: int, phase_step: int, phase_end: bool) -> dict[str, dict[str, float]]:
        with self._timed("eval_seconds"):
            res = self.evaluate()
            for d, r in res.items():  # a non-finite weight shows here first if a finite loss blew them up
                if not math.isfinite(r["loss"]):
                    raise Diverged(self.progress.step, phase, r["loss"], f"evaluation loss on {d}")
            acc = self.task_accuracy()  # at every evaluation: stage analyses match SFT and RL at equal accuracy
            self.parallel.reshard(self.model)  # FSDP: forwards without backward leave gathered parameters
            rows = [{"phase": phase, "step": self.progress.step, "phase_step": phase_step, "phase_end": phase_end,
                     "domain": d, **r, **({"task_accuracy": acc[d]} if d in acc else {})} for d, r in res.items()]
            self.progress.history.extend(rows)
            self.index.add_evals(self.run_id, rows)
            if self.tracker is not None:
                self.tracker.log_evals(phase, self.progress.step, phase_end, rows, self.progress.history)
        return res

    def _checkpoint(self, tag: str) -> None:
        with self._timed("checkpoint_seconds"):
            self.progress.wall_seconds = self.wall_before + time.perf_counter() - self.t_start
            par = self.parallel
            if not (par.main or par.fsdp):  # DDP: rank 0's replica is everyone's
                return
            tensors = {f"model.{k}": v for k, v in par.model_tensors(self.model).items()}
            if self.optimizer is not None:
                optim = ck.optimizer_tensors(self.optimizer, self.param_names)
                tensors.update({f"optim.{k}": par.full(v) for k, v in optim.items()})  # FSDP: gathered
            if not par.main:
                return
            tensors.update({f"method.{k}": v for k, v in self.method.state_tensors().items()})
            p = self.progress
            if p.phase_step:  # only a mid-phase resume needs the objective's state (e.g. GRPO's reference)
                tensors.update({f"objective.{k}": v for k, v in self.objective.state_tensors().items()})
            state = {"phase": p.phase, "phase_step": p.phase_step, "step": p.step, "train_seconds": p.train_seconds,
                     "train_tokens": p.train_tokens, "rng": ck.rng_state(), "method": self.method.state_json(),
                     "has_optimizer": self.optimizer is not None, "history": p.history,
                     "probes": p.probes, "objective_log": p.objective_log,
                     "timings": {k: getattr(p, k) for k in RESTORED_TIMINGS}}
            ck.save_checkpoint(self.ckpt_dir, tag, tensors, state)
            if self.cfg.checkpoint_resume_state == "latest":
                ck.prune_resume_state(self.ckpt_dir)

    def restore(self, loaded: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None) -> bool:
        """Load the newest checkpoint (or ``loaded``, already read and verified); drop index rows written after
        it. False if there is none."""
        tag = ck.latest_tag(self.ckpt_dir)
        if tag is None:
            self.index.truncate_evals(self.run_id, -1)
            self.index.truncate_probes(self.run_id, -1)
            return False
        tensors, state = loaded if loaded is not None else ck.load_checkpoint(self.ckpt_dir, tag)
        if state["has_optimizer"] and not any(k.startswith("optim.") for k in tensors):
            raise UserError(f"checkpoint {self.ckpt_dir / tag} lacks its resume state ({tag}.resume.safetensors); "
                            f"it cannot be resumed exactly: start the run again in a new --out folder")
        self.method.prepare_restore(self, state["method"])  # e.g. re-grow an expanded model first
        model_sd = ck.split_prefix(tensors, "model.")
        self._check_shapes(model_sd, tag)
        for m in self.model.maskable().values():  # masks are buffers that may be None before loading
            name = self._module_name(m)
            if f"{name}.mask" in model_sd:
                m.mask = model_sd[f"{name}.mask"].to(self.device)
        self.model.load_state_dict({k: v.to(self.device) for k, v in model_sd.items()}, strict=False)
        self.param_names = param_names(self.model)  # a new csr mask = new values
        self.progress = Progress(state["phase"], state["phase_step"], state["step"], state["train_seconds"],
                                 state["train_tokens"], history=state["history"], probes=state.get("probes", []),
                                 objective_log=state.get("objective_log", []),
                                 **state.get("timings", {}))
        if state["has_optimizer"]:
            self.optimizer = self.make_optimizer()
            ck.load_optimizer_tensors(self.optimizer, self.param_names, ck.split_prefix(tensors, "optim."),
                                      model=self.model)
        self.method.load_state(ck.split_prefix(tensors, "method."), state["method"])
        self._objective_state = ck.split_prefix(tensors, "objective.")
        ck.set_rng_state(state["rng"])
        self.index.truncate_evals(self.run_id, self.progress.step)
        self.index.truncate_probes(self.run_id, self.progress.step)
        return True

    def _check_shapes(self, model_sd: dict[str, torch.Tensor], tag: str) -> None:
        """One line instead of torch's list when a checkpoint does not fit the model the config builds."""
        own = self.model.state_dict()
        bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in model_sd.items()
               if own.get(k) is not None and tuple(own[k].shape) != tuple(v.shape)]
        if bad:
            k, a, b = bad[0]
            raise UserError(f"checkpoint {self.ckpt_dir / tag} does not fit this run's model: '{k}' is {list(a)} "
                            f"there but {list(b)} here ({len(bad)} tensor(s) differ); the run folder's config.yaml "
                            f"no longer matches its checkpoints: restore it or start again in a new --out")

    def _module_name(self, module: torch.nn.Module) -> str:
        return next(n for n, m in self.model.named_modules() if m is module)

    def run(self, resume: bool = False) -> RunSummary:
        """Train the run (or continue it from its newest checkpoint) while holding its lock; returns what it wrote
        to summary.json.

        The index records how it ended: 'done', 'diverged' (the last good checkpoint stays), 'interrupted'
        (SIGINT/SIGTERM) or 'failed'.
        """
        with run_lock(self.run_dir) if self.parallel.main else nullcontext():  # rank 0 holds it for all
            try:
                return self._run(resume)
            except Diverged as e:
                self._set_status("diverged", str(e))
                raise
            except KeyboardInterrupt:
                self._set_status("interrupted", "interrupted by a signal; continue with `sparsecl resume`")
                raise
            except UserError:  # e.g. a tampered checkpoint: refused before anything was written
                raise
            except Exception as e:
                self._set_status("failed", f"{type(e).__name__}: {e}")
                raise
            finally:
                if self.tracker is not None:
                    self.tracker.close()
                    self.tracker = None

    def _set_status(self, status: str, error: str) -> None:
        try:
            self.index.set_run(self.run_id, self.cfg.name, status, error=error)
        except Exception:  # noqa: BLE001 - the original error matters more (e.g. a full disk)
            pass

    def _run(self, resume: bool) -> RunSummary:
        cfg = self.cfg
        tag = ck.latest_tag(self.ckpt_dir) if resume else None
        loaded = ck.load_checkpoint(self.ckpt_dir, tag) if tag else None  # verified before anything is written
        # of the model as built, before any restore; written only once the checkpoint is known to fit
        topology = None if (self.run_dir / "topology.json").is_file() else self._topology_report()
        restored = resume and self.restore(loaded)  # a checkpoint that does not fit is refused here
        self._parallelize()
        if self.parallel.main:  # rank 0 writes for every rank (other ranks' index is a NoIndex)
            remove_stale_temps(self.run_dir)  # a kill during a write leaves its temp file; we hold the lock
            if not resume:
                atomic_write_text(self.run_dir / "config.yaml", dump_yaml(cfg))
            if self.tokenizer.hf is not None and not (self.run_dir / TOKENIZER_FILE).is_file():
                atomic_write_text(self.run_dir / TOKENIZER_FILE, self.tokenizer.to_json())
            if topology is not None:
                atomic_write_json(self.run_dir / "topology.json", topology)
            self.tracker = open_tracker(cfg, self.run_dir, self.run_id, self.progress.step if restored else None)
        self.index.set_run(self.run_id, cfg.name, "running", config=to_dict(cfg))
        if not restored:  # a fresh start: rows of an earlier attempt (e.g. a deleted folder) would mix in
            self.index.forget_run(self.run_id)
        self.t_start = time.perf_counter()
        self.wall_before = self.progress.wall_seconds
        if not restored:
            self._record(0, 0, True)
        T = len(cfg.schedule)
        while self.progress.phase < T:
            phase = self.progress.phase + 1
            self._run_phase(phase)
        plain = self._plain_model()
        total, nonzero = structural_counts(plain)
        p = self.progress
        data = data_summary({n: d.info for n, d in self.domains.items()})
        totals = RunTotals(
            params_total=total, params_nonzero=nonzero, train_seconds=p.train_seconds, train_tokens=p.train_tokens,
            wall_seconds=self.wall_before + time.perf_counter() - self.t_start, eval_seconds=p.eval_seconds,
            probe_seconds=p.probe_seconds, checkpoint_seconds=p.checkpoint_seconds,
            eval_tokens={n: int(y.numel()) for n, (_, y) in self.val.items()}, probes=p.probes,
            stages=self._stage_summary(), data=data["data"], data_sources=data["data_sources"],
            tokenizer=self.tokenizer.info(), matching=self.matching.summary())
        summary = build_summary(cfg, p.history, self.phases, self.method, self.scheduled, self.layers, plain, totals)
        summary.extra.update(self.parallel.summary())
        self.summary = summary
        written = summary.to_json()
        if self.parallel.main:
            atomic_write_json(self.run_dir / "summary.json", written)
        self.index.set_run(self.run_id, cfg.name, "done", summary=written)
        return summary

    def _stage_summary(self) -> dict[str, Any]:
        """Per phase: its objective, the old LM domains' mean loss increase during it (+ = forgot), the task
        accuracy matrix (rows = phases 0..T) and the objective's log; with
        task domains also every evaluation point's losses and accuracies (``stage_evals``)."""
        tasks = list(self.task_val)
        ends = {(r["phase"], r["domain"]): r.get("task_accuracy") for r in self.progress.history if r["phase_end"]}
        out: dict[str, Any] = {"objectives": [s.objective for s in self.cfg.schedule]}
        if tasks:
            out["tasks"] = tasks
            out["task_accuracy"] = [[ends.get((t, d)) for d in tasks] for t in range(len(self.cfg.schedule) + 1)]
            points: dict[int, dict[str, Any]] = {}
            for r in self.progress.history:
                pt = points.setdefault(r["step"], {"phase": r["phase"], "phase_step": r["phase_step"],
                                                   "step": r["step"], "loss": {}, "task_accuracy": {}})
                pt["loss"][r["domain"]] = r["loss"]
                if "task_accuracy" in r:
                    pt["task_accuracy"][r["domain"]] = r["task_accuracy"]
            out["stage_evals"] = [points[k] for k in sorted(points)]
        loss = {(r["phase"], r["domain"]): r["loss"] for r in self.progress.history if r["phase_end"]}
        lm = [d for d in self.scheduled if d not in self.task_val]
        per_phase: list[float | None] = []
        for t, spec in enumerate(self.cfg.schedule, 1):  # old LM domains' loss increase during phase t
            old = [d for d in lm if any(d in p for p in self.phases[:t - 1]) and d not in spec.domains]
            per_phase.append(sum(loss[(t, d)] - loss[(t - 1, d)] for d in old) / len(old) if old else None)
        out["lm_forgetting_per_phase"] = per_phase
        out["objective_stats"] = [
            OBJECTIVES[s.objective]().summary([r for r in self.progress.objective_log if r["phase"] == i + 1])
            for i, s in enumerate(self.cfg.schedule)]
        return out

    def _run_phase(self, phase: int) -> None:
        cfg, p = self.cfg, self.progress
        spec = cfg.schedule[phase - 1]
        doms = self.method.phase_domains(phase, spec.domains, self.scheduled)
        self.current_domains = doms
        self.objective = OBJECTIVES[spec.objective]()
        if p.phase_step == 0:
            if self.optimizer is None or cfg.train.reset_optimizer:
                self.optimizer = self.make_optimizer()
            with self._timed("train_seconds"):  # phase-level method work counts as training time
                self.method.begin_phase(self, phase)
                self.objective.begin_phase(self, phase)
        else:
            if self.optimizer is None:
                self.optimizer = self.make_optimizer()
            self.objective.load_state(self, self._objective_state)
        bar = tqdm(total=spec.steps, initial=p.phase_step, desc=f"{cfg.name} phase {phase}/{len(cfg.schedule)} "
                   f"[{'+'.join(spec.domains)}]", disable=not (self.progress_bar and self.parallel.main), leave=True,
                   dynamic_ncols=True, file=None)
        self.model.train()
        while p.phase_step < spec.steps:
            s = p.phase_step
            t0 = time.perf_counter()
            lr = lr_at(cfg, s, spec.steps, spec.lr)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            self.optimizer.zero_grad(set_to_none=True)
            out, loss = self._forward_backward(doms, phase, s)
            with self.autocast():  # a method's extra forward passes (A-GEM, SAM) are training passes too
                self.method.after_backward(self, out.batch)
            if cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
            self.optimizer.step()
            with self.autocast():
                self.method.after_step(self, out.batch)
            self._sync()
            loss_value = loss.item()  # already synchronised: no extra wait on CUDA
            if self.parallel.distributed:  # every rank sees the global loss (and diverges together)
                loss_value, n = self.parallel.sums(loss_value, out.tokens)
                loss_value, out.tokens = loss_value / self.parallel.world, int(n)
            if not math.isfinite(loss_value):  # stop before evaluating or checkpointing a broken model
                raise Diverged(p.step + 1, phase, loss_value)
            p.train_seconds += time.perf_counter() - t0
            p.train_tokens += out.tokens
            if out.stats:
                p.objective_log.append({"phase": phase, "step": p.step + 1, **out.stats})
            p.phase_step += 1
            p.step += 1
            bar.update(1)
            if s % 10 == 0:
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.1e}")
            if cfg.eval.every and p.phase_step % cfg.eval.every == 0 and p.phase_step < spec.steps:
                self._record(phase, p.phase_step, False)
                self.model.train()
            if cfg.probe_every and p.phase_step % cfg.probe_every == 0 and p.phase_step < spec.steps:
                with self._timed("probe_seconds"):
                    probe_trainer(self, phase, phase_end=False)
            if cfg.checkpoint_every and p.phase_step % cfg.checkpoint_every == 0 and p.phase_step < spec.steps:
                self._checkpoint(f"step-{p.step:07d}")
            _maybe_simulate_kill(p.step)
        bar.close()
        self._record(phase, p.phase_step, True)
        with self._timed("train_seconds"):
            self.method.end_phase(self, phase)
        with self._timed("probe_seconds"):
            probe_trainer(self, phase, phase_end=True)
        p.phase, p.phase_step = phase, 0
        self._checkpoint(ck.phase_tag(phase))


def _maybe_simulate_kill(step: int) -> None:
    """Test hook: SPARSECL_KILL_AT_STEP=N makes the process die abruptly after step N (like SIGKILL); with
    SPARSECL_KILL_RANK=R only torchrun's rank R does."""
    kill = os.environ.get("SPARSECL_KILL_AT_STEP")
    only = os.environ.get("SPARSECL_KILL_RANK")
    if kill and int(kill) == step and (only is None or int(only) == env_world()[0]):
        os._exit(137)
