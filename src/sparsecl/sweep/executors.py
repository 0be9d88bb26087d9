"""Run the points of a sweep: a local pool of processes, or Ray tasks on a laptop or a cluster.

Each run executes in its own process through the same ``Trainer`` as ``sparsecl run``, into
``OUT/<run id>/``, writing its evaluation rows and status to the one ``OUT/index.sqlite`` (WAL).
A run that raises, or whose process dies, is recorded as failed (``runs.status='failed'``,
``runs.error``) and the sweep goes on. A re-run skips finished runs, resumes unfinished ones from
their last checkpoint and starts the others from scratch.

The local executor runs its own small pool of spawned (not forked: torch's thread pools stay clean) worker
processes instead of a ``ProcessPoolExecutor``, because such a pool breaks for good when one worker is
killed (out of memory, a segfault), which would stop the sweep; here only that worker's run fails.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from sparsecl.config import build_config, to_dict
from sparsecl.data.tokenizer import TOKENIZER_FILE
from sparsecl.errors import Diverged, UserError
from sparsecl.store.index import INDEX_NAME, Index
from sparsecl.store.lock import LockBusy
from sparsecl.train.runner import config_matches as matches
from sparsecl.train.runner import has_checkpoint, load_all_domains, run_state
from sparsecl.train.trainer import Trainer

Result = dict[str, Any]


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def plan_local(parallel: int | None, threads: int | None, cores: int | None = None) -> tuple[int, int]:
    """(parallel runs, threads per run) with parallel x threads <= cores; default: cores runs of 1 thread."""
    cores = cores or available_cores()
    if parallel is not None and parallel < 1:
        raise UserError(f"--parallel must be >= 1, got {parallel}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads-per-run must be >= 1, got {threads}")
    if parallel is None and threads is None:
        return cores, 1
    if parallel is None:
        assert threads is not None  # both None returned above
        return max(1, cores // threads), threads
    if threads is None:
        return parallel, max(1, cores // parallel)
    if parallel * threads > cores:
        raise UserError(f"--parallel {parallel} x --threads-per-run {threads} = {parallel * threads} exceeds the "
                        f"{cores} available cores; lower one of them")
    return parallel, threads


def config_matches(run_dir: Path, cfg_data: dict[str, Any]) -> bool:
    return matches(run_dir, build_config(cfg_data))


_DOMAINS: dict[str, Any] = {}  # per worker process: runs of one sweep mostly share their domains


def _domains_for(cfg: Any, run_dir: Path) -> Any:
    """The run's tokenised domains, reused across the runs a worker executes (they are deterministic)."""
    key = json.dumps([cfg.model.block_size, to_dict(cfg.data), str(run_dir)
                      if (run_dir / TOKENIZER_FILE).is_file() else None], sort_keys=True)
    if key not in _DOMAINS:
        if len(_DOMAINS) >= 4:
            _DOMAINS.pop(next(iter(_DOMAINS)))
        _DOMAINS[key] = load_all_domains([cfg], [run_dir])[0]
    return _DOMAINS[key]


def execute_run(cfg_data: dict[str, Any], out: str, run_id: str) -> Result:
    """Train (or resume, or skip) one run; never raises: failures are recorded in the index and returned.

    Status: 'done', 'skipped', 'failed', 'diverged' (the trainer recorded it), 'busy' (another process holds
    the run's lock; its index row is left alone) or 'interrupted' (SIGTERM/SIGINT; the trainer recorded it).
    """
    t0 = time.perf_counter()
    rd = Path(out) / run_id
    index = Index(Path(out) / INDEX_NAME)
    try:
        cfg = build_config(cfg_data)
        state = run_state(rd)
        if (state == "done" or has_checkpoint(rd)) and not config_matches(rd, cfg_data):
            raise UserError(f"run folder '{rd}' holds a run with a different config; use another --out")
        if state == "done":
            index.set_run(run_id, cfg.name, "done", summary=json.loads((rd / "summary.json").read_text()))
            return {"run_id": run_id, "status": "skipped", "error": None, "seconds": 0.0}
        domains = _domains_for(cfg, rd)
        Trainer(cfg, domains, rd, index, run_id, progress_bar=False).run(resume=has_checkpoint(rd))
        return {"run_id": run_id, "status": "done", "error": None, "seconds": time.perf_counter() - t0}
    except LockBusy as e:  # another process trains this run: leave its files and index row alone
        return {"run_id": run_id, "status": "busy", "error": str(e), "seconds": time.perf_counter() - t0}
    except Diverged as e:
        return {"run_id": run_id, "status": "diverged", "error": str(e), "seconds": time.perf_counter() - t0}
    except KeyboardInterrupt:
        return {"run_id": run_id, "status": "interrupted", "error": "interrupted",
                "seconds": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001 - a failed run is data, not a reason to stop the sweep
        error = f"{type(e).__name__}: {e}"
        try:
            rd.mkdir(parents=True, exist_ok=True)
            (rd / "error.txt").write_text(traceback.format_exc())
        except OSError:
            pass
        index.set_run(run_id, str(cfg_data.get("name", run_id)), "failed", error=error)
        return {"run_id": run_id, "status": "failed", "error": error, "seconds": time.perf_counter() - t0}
    finally:
        index.close()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _exit_with_parent(poll_s: float = 1.0) -> None:
    """SIGTERM this worker when its parent dies (e.g. the sweep was killed): no orphan keeps training."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="sparsecl-parent-watch", daemon=True).start()


def _worker(conn: Any) -> None:
    """A long-lived worker: runs jobs from ``conn`` until it receives None (torch is imported once).

    SIGTERM (sent by the parent on its own SIGTERM or Ctrl-C, or by the parent watch) interrupts the run,
    which the trainer marks 'interrupted'; the worker then exits.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    _exit_with_parent()
    try:
        while True:
            try:
                job = conn.recv()
            except EOFError:
                return
            if job is None:
                return
            res = execute_run(*job)
            conn.send(res)
            if res["status"] == "interrupted":
                return
    except (KeyboardInterrupt, BrokenPipeError, OSError):
        return


class _Worker:
    def __init__(self, ctx: Any) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child,), name="sparsecl-sweep-worker", daemon=True)
        self.proc.start()
        child.close()
        self.job: tuple[str, str, float] | None = None  # (run id, run name, start time)


def run_local(jobs: list[tuple[str, dict[str, Any]]], out: Path, parallel: int,
              on_result: Callable[[Result], None]) -> list[Result]:
    """At most ``parallel`` runs at a time on spawned worker processes; results reported as runs end.

    Workers are reused (importing torch costs seconds per process), but a worker that dies mid-run (killed,
    out of memory, a segfault) only fails its own run: it is recorded and a fresh worker takes its place.
    """
    ctx = mp.get_context("spawn")
    pending = list(jobs)
    workers: list[_Worker] = []
    results: list[Result] = []

    def finish(w: _Worker, res: Result | None) -> None:
        assert w.job is not None
        run_id, name, t0 = w.job
        w.job = None
        if res is None:  # the worker died
            w.proc.join()
            error = f"worker process died with exit code {w.proc.exitcode} (killed, or out of memory?)"
            index = Index(out / INDEX_NAME)
            try:
                index.set_run(run_id, name, "failed", error=error)
            finally:
                index.close()
            res = {"run_id": run_id, "status": "failed", "error": error, "seconds": time.perf_counter() - t0}
            workers.remove(w)
        elif res["status"] == "skipped":
            res = {**res, "status": "done"}
        results.append(res)
        on_result(res)

    try:
        while pending or any(w.job for w in workers):
            while pending and sum(w.job is not None for w in workers) < parallel:
                w = next((w for w in workers if w.job is None), None)
                if w is None:
                    w = _Worker(ctx)
                    workers.append(w)
                run_id, cfg_data = pending.pop(0)
                w.job = (run_id, str(cfg_data.get("name", run_id)), time.perf_counter())
                w.conn.send((cfg_data, str(out), run_id))
            busy = [w for w in workers if w.job is not None]
            ready = set(wait([w.conn for w in busy] + [w.proc.sentinel for w in busy]))
            for w in busy:
                if w.conn in ready:
                    try:
                        res = w.conn.recv()
                    except (EOFError, OSError):
                        res = None
                    finish(w, res)
                elif w.proc.sentinel in ready:
                    finish(w, None)
    except BaseException:  # SIGTERM/Ctrl-C of the sweep: stop the runs, which mark themselves interrupted
        for w in workers:
            if w.job is not None and w.proc.is_alive():
                w.proc.terminate()
        raise
    finally:
        for w in workers:
            try:
                w.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for w in workers:
            w.proc.join(timeout=30)
            if w.proc.is_alive():
                w.proc.terminate()
                w.proc.join()
    return results


def run_ray(jobs: list[tuple[str, dict[str, Any]]], out: Path, threads: int, gpus: float, address: str | None,
            on_result: Callable[[Result], None]) -> list[Result]:
    """One Ray task per run with num_cpus = threads per run; Ray schedules them over its nodes."""
    try:
        import ray  # optional: ray (sparsecl[ray])
    except ImportError as e:
        raise UserError("--executor ray needs Ray: pip install 'sparsecl[ray]'") from e
    if not ray.is_initialized():
        if address:
            ray.init(address=address)  # an existing cluster (ray start --head) or a ray:// client address
        else:
            ray.init(include_dashboard=False)
    task = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(execute_run)
    refs = {task.remote(cfg_data, str(out.resolve()), run_id): (run_id, str(cfg_data.get("name", run_id)))
            for run_id, cfg_data in jobs}
    results: list[Result] = []
    waiting = list(refs)
    while waiting:
        ready, waiting = ray.wait(waiting, num_returns=1)
        run_id, name = refs[ready[0]]
        try:
            res = ray.get(ready[0])
            if res["status"] == "skipped":
                res["status"] = "done"
        except Exception as e:  # noqa: BLE001 - the worker died (e.g. killed); record and go on
            error = f"ray task failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            index = Index(out / INDEX_NAME)
            try:
                index.set_run(run_id, name, "failed", error=error)
            finally:
                index.close()
            res = {"run_id": run_id, "status": "failed", "error": error, "seconds": 0.0}
        results.append(res)
        on_result(res)
    return results
