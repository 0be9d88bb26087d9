"""Run the points of a sweep: a local pool of processes, or Ray tasks on a laptop or a cluster.

Each run executes in its own process through the same ``Trainer`` as ``sparsecl run``, into
``OUT/<run id>/``, writing its evaluation rows and status to the one ``OUT/index.sqlite`` (WAL).
A run that raises, or whose process dies, is recorded as failed (``runs.status='failed'``,
``runs.error``) and the sweep goes on. A re-run skips finished runs, resumes unfinished ones from
their last checkpoint and starts the others from scratch.

The local executor runs its own small pool of spawned (not forked: torch's thread pools stay clean) worker
processes instead of a ``ProcessPoolExecutor``, because such a pool breaks for good when one worker is
killed (out of memory, a segfault), which would stop the sweep; here only that worker's run fails.

The Ray executor runs one task per run on any node of a cluster. OUT must be one shared path on every node:
a task refuses to run where it cannot see ``OUT/sweep.json`` instead of writing results to a node's local
disk. Every attempt is recorded (host, pid, Ray node, GPUs) in the index's ``attempts`` table. A run whose
node dies is marked 'interrupted' (not 'failed': nothing was wrong with the run) and resumes from its last
checkpoint on the next invocation; if the whole cluster stops answering, the sweep says so in one line,
marks the runs that were training 'interrupted' and returns instead of waiting for Ray's own timeouts.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import signal
import socket
import sys
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
from sparsecl.store.checkpoint import latest_tag
from sparsecl.store.index import INDEX_NAME, Index
from sparsecl.store.lock import LockBusy
from sparsecl.train.runner import config_matches as matches
from sparsecl.train.runner import has_checkpoint, load_all_domains, run_state
from sparsecl.train.trainer import Trainer

Result = dict[str, Any]
SWEEP_FILE = "sweep.json"  # written by run_sweep before any run starts


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
    where = _where()
    if not (Path(out) / SWEEP_FILE).is_file():  # before any write: never create a stray OUT on a node's disk
        return {"run_id": run_id, "status": "failed", "seconds": 0.0, **where,
                "error": f"OUT '{out}' is not visible on host {where['host']} (no {SWEEP_FILE} there): on a Ray "
                         f"cluster OUT must be a shared filesystem mounted at the same path on every node"}
    index = Index(Path(out) / INDEX_NAME)
    attempt: int | None = None
    res: Result | None = None
    try:
        cfg = build_config(cfg_data)
        state = run_state(rd)
        if (state == "done" or has_checkpoint(rd)) and not config_matches(rd, cfg_data):
            raise UserError(f"run folder '{rd}' holds a run with a different config; use another --out")
        if state == "done":

            index.set_run(run_id, cfg.name, "done", summary=json.loads((rd / "summary.json").read_text()))
            res = {"run_id": run_id, "status": "skipped", "error": None, "seconds": 0.0}
            return {**res, **where}
        domains = _domains_for(cfg, rd)
        resume = has_checkpoint(rd)
        attempt = index.start_attempt(run_id, where, latest_tag(rd / "ckpt") if resume else None)
        Trainer(cfg, domains, rd, index, run_id, progress_bar=False).run(resume=resume)
        res = {"run_id": run_id, "status": "done", "error": None, "seconds": time.perf_counter() - t0}
    except LockBusy as e:  # another process trains this run: leave its files and index row alone
        res = {"run_id": run_id, "status": "busy", "error": str(e), "seconds": time.perf_counter() - t0}
    except Diverged as e:
        res = {"run_id": run_id, "status": "diverged", "error": str(e), "seconds": time.perf_counter() - t0}
    except KeyboardInterrupt:
        res = {"run_id": run_id, "status": "interrupted", "error": "interrupted",
               "seconds": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001 - a failed run is data, not a reason to stop the sweep
        error = f"{type(e).__name__}: {e}"
        try:
            rd.mkdir(parents=True, exist_ok=True)
            (rd / "error.txt").write_text(traceback.format_exc())
        except OSError:
            pass
        index.set_run(run_id, str(cfg_data.get("name", run_id)), "failed", error=error)
        res = {"run_id": run_id, "status": "failed", "error": error, "seconds": time.perf_counter() - t0}
    finally:
        try:
            if attempt is not None:
                index.end_attempt(attempt, res["status"] if res is not None else "interrupted")
        finally:
            index.close()
    assert res is not None  # every path above set it or raised
    return {**res, **where}


def _where() -> dict[str, Any]:
    """Host and pid of this process and, in a Ray task, its node and the GPUs Ray gave it."""
    where: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ctx = ray.get_runtime_context()
        where.update(node_id=ctx.get_node_id(), node_ip=ray.util.get_node_ip_address(),
                     gpu_ids=[str(g) for g in ray.get_gpu_ids()])
    return where


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


def plan_ray(threads: int | None, gpus: float) -> tuple[int, float]:
    """(CPUs, GPUs) each Ray task reserves. Ray shares a GPU between tasks that ask for a fraction of one
    and hands out whole GPUs above that, so 0.25 or 2 are fine and 1.5 is not."""
    if threads is not None and threads < 1:
        raise UserError(f"--threads-per-run must be >= 1, got {threads}")
    if not math.isfinite(gpus) or gpus < 0:
        raise UserError(f"--gpus-per-run must be a number >= 0, got {gpus}")
    if gpus > 1 and gpus != int(gpus):
        raise UserError(f"--gpus-per-run {gpus}: Ray gives a task a fraction of one GPU or whole GPUs; use e.g. "
                        f"0.5, 1 or {math.ceil(gpus)}")
    return threads or 1, gpus


def check_ray_devices(devices: dict[str, str], gpus: float) -> None:
    """Each run's device (run id -> device) against the GPUs its task reserves, before anything is written.

    The driver's own devices do not matter on a cluster, but Ray hides the GPUs a task did not reserve
    (CUDA_VISIBLE_DEVICES), so device=cuda needs --gpus-per-run, and reserving GPUs for device=cpu wastes them.
    """
    for run_id, device in devices.items():
        if device == "cuda" and gpus == 0:
            raise UserError(f"run '{run_id}' has device=cuda but --gpus-per-run is 0: Ray gives a task only the "
                            f"GPUs it reserves; pass --gpus-per-run 1 (or a fraction to share a GPU)")
        if device == "cpu" and gpus > 0:
            raise UserError(f"run '{run_id}' has device=cpu but --gpus-per-run {gpus} reserves GPUs it would not "
                            f"use; drop --gpus-per-run or set device=cuda (or auto)")


def _endpoint(address: str) -> tuple[str, int] | None:
    """host and port of a 'host:port' or 'ray://host:port' address; None for 'auto' and other forms."""
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _reachable(endpoint: tuple[str, int], timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(endpoint, timeout=timeout).close()
        return True
    except OSError:
        return False


def connect_ray(address: str | None) -> bool:
    """Connect to the cluster at ``address`` or start a private local Ray; True if this call connected.

    An address nobody answers at is refused at once (ray.init would retry it forever). Without --address a
    fresh local instance is started even when a cluster runs on this machine (address='local'), so a sweep
    never lands on someone else's cluster by accident.
    """
    try:
        import ray  # optional: ray (sparsecl[ray])
    except ImportError as e:
        raise UserError("--executor ray needs Ray: pip install 'sparsecl[ray]'") from e
    if ray.is_initialized():
        return False
    if address:
        endpoint = _endpoint(address)
        if endpoint is not None and not _reachable(endpoint):
            raise UserError(f"no Ray cluster answers at --address {address}; start one (ray start --head) or fix "
                            f"the address")
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except ConnectionError as e:
            raise UserError(f"cannot connect to a Ray cluster at --address {address}: {e}") from e
    else:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    return True


POLL_S = 2.0  # how often the driver looks up from ray.wait to check that the cluster still answers
LOST_AFTER_S = 10.0  # the cluster's head (GCS) refusing connections this long means the cluster is gone


class ClusterLost(Exception):
    pass


def _mark_lost(out: Path, run_id: str, name: str, status: str, error: str, attempt_status: str) -> None:
    """Record a run whose task was lost with its node or cluster; its open attempts get ``attempt_status``."""

    index = Index(out / INDEX_NAME)
    try:
        index.set_run(run_id, name, status, error=error)
        index.end_open_attempts(run_id, attempt_status)
    finally:
        index.close()


def _index_status(out: Path, run_id: str) -> str | None:

    index = Index(out / INDEX_NAME)
    try:
        row = index.conn.execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()
    finally:
        index.close()
    return row[0] if row else None


def _task_lost(out: Path, run_id: str, name: str, e: BaseException) -> Result:
    """The result of a run whose Ray task raised: its node died ('interrupted', resumable) or its process did
    ('failed', as a killed local worker); a run that finished before its node died stays 'done'."""
    import ray.exceptions as rx  # optional: ray (sparsecl[ray])


    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    if run_state(out / run_id) == "done":
        return {"run_id": run_id, "status": "done", "error": None, "seconds": 0.0}
    if isinstance(e, rx.NodeDiedError):
        error = (f"its Ray node died ({first}); rerun the sweep to resume it from its last checkpoint")
        _mark_lost(out, run_id, name, "interrupted", error, "node lost")
        return {"run_id": run_id, "status": "interrupted", "error": error, "seconds": 0.0}
    if isinstance(e, rx.TaskCancelledError):
        _mark_lost(out, run_id, name, "interrupted", "cancelled", "cancelled")
        return {"run_id": run_id, "status": "interrupted", "error": "cancelled", "seconds": 0.0}
    error = f"ray task failed: {type(e).__name__}: {first}"
    _mark_lost(out, run_id, name, "failed", error, "process died")
    return {"run_id": run_id, "status": "failed", "error": error, "seconds": 0.0}


def run_ray(jobs: list[tuple[str, dict[str, Any]]], out: Path, threads: int, gpus: float, address: str | None,
            on_result: Callable[[Result], None]) -> list[Result]:
    """One Ray task per run with num_cpus = threads and num_gpus = gpus per run; Ray schedules them over its
    nodes. No automatic retries: a run that kills its process (e.g. out of memory) would only die again."""
    import ray  # optional: ray (sparsecl[ray])

    connect_ray(address)
    out = out.resolve()
    task = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(execute_run)
    refs = {task.remote(cfg_data, str(out), run_id): (run_id, str(cfg_data.get("name", run_id)))
            for run_id, cfg_data in jobs}
    try:
        gcs = _endpoint(ray.get_runtime_context().gcs_address)
    except Exception:  # noqa: BLE001 - e.g. a ray:// client session: rely on Ray's own errors
        gcs = None
    results: list[Result] = []
    waiting = list(refs)
    silent_since: float | None = None
    try:
        while waiting:
            try:
                ready, waiting = ray.wait(waiting, num_returns=1, timeout=POLL_S)
            except ConnectionError as e:
                raise ClusterLost(str(e)) from e
            for ref in ready:
                run_id, name = refs[ref]
                try:
                    res = ray.get(ref)
                    if res["status"] == "skipped":
                        res["status"] = "done"
                    elif res["status"] == "failed":  # also when the task could not see OUT to record it
                        _mark_lost(out, run_id, name, "failed", res["error"], "failed")
                except ray.exceptions.RayError as e:
                    res = _task_lost(out, run_id, name, e)
                results.append(res)
                on_result(res)
            if gcs is not None and waiting and not ready:
                if _reachable(gcs):
                    silent_since = None
                elif silent_since is None:
                    silent_since = time.monotonic()
                elif time.monotonic() - silent_since > LOST_AFTER_S:
                    raise ClusterLost(f"its head at {gcs[0]}:{gcs[1]} has refused connections for "
                                      f"{LOST_AFTER_S:.0f} s")
    except ClusterLost as e:
        lost = _cluster_lost(out, [refs[r] for r in waiting])
        started = sum(r["error"] != _NOT_STARTED for r in lost)
        print(f"sparsecl: error: lost the Ray cluster ({e}): {started} run(s) interrupted, {len(lost) - started} "
              f"not started; restart the cluster and rerun this command to resume them", file=sys.stderr)
        for res in lost:
            results.append(res)
            on_result(res)
    except KeyboardInterrupt:  # Ctrl-C/SIGTERM of the sweep: stop the runs, which mark themselves interrupted
        for ref in waiting:
            ray.cancel(ref)
        ray.wait(waiting, num_returns=len(waiting), timeout=30)
        raise
    return results


_NOT_STARTED = "not started: the Ray cluster was lost"


def _cluster_lost(out: Path, pending: list[tuple[str, str]]) -> list[Result]:
    """Results for the runs still pending when the cluster went away; those that were training are marked
    'interrupted' in the index (queued ones stay 'queued', finished ones 'done')."""

    lost: list[Result] = []
    for run_id, name in pending:
        if run_state(out / run_id) == "done":
            lost.append({"run_id": run_id, "status": "done", "error": None, "seconds": 0.0})
        elif _index_status(out, run_id) == "running":
            error = "the Ray cluster was lost while it trained; rerun the sweep to resume it from its last checkpoint"
            _mark_lost(out, run_id, name, "interrupted", error, "cluster lost")
            lost.append({"run_id": run_id, "status": "interrupted", "error": error, "seconds": 0.0})
        else:
            lost.append({"run_id": run_id, "status": "interrupted", "error": _NOT_STARTED, "seconds": 0.0})
    return lost
