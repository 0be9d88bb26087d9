"""One process per run: an exclusive ``flock`` on ``<run>/.lock`` while the run trains.

The kernel drops the lock when its holder dies however it dies, so a stale lock never blocks a resume.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sparsecl.errors import UserError

LOCK_NAME = ".lock"


class LockBusy(UserError):
    """Another live process holds the run's lock."""


def _busy(run_dir: Path) -> LockBusy:
    try:
        pid = (run_dir / LOCK_NAME).read_text().strip()
    except OSError:
        pid = "?"
    return LockBusy(f"run '{run_dir}' is being trained by another process (pid {pid or '?'}); wait for it to "
                     f"finish or stop it, then rerun")


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock for the block; a UserError if another process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(run_dir) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def check_unlocked(run_dir: Path) -> None:
    """Refuse early (before anything is written) when another process trains this run now."""
    path = run_dir / LOCK_NAME
    if not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(run_dir) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
