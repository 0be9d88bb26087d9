"""The ``sparsecl`` command. Exit codes: 0 success, 2 bad input, 1 failure.

Each subcommand lives in ``sparsecl/commands/<name>.py`` with a ``register(subparsers)`` function that
adds its parser and sets ``func``; adding a command is one file plus one line in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from sparsecl.commands import HelpParser
from sparsecl.errors import RunFailed, UserError

COMMANDS = ["run", "resume", "domains", "topology", "probe", "sweep", "report"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sparsecl",
        description="Train dense and fixed-sparse GPTs on a sequence of text domains and measure how much they "
        "forget. Every subcommand has --help.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", parser_class=HelpParser)
    for name in COMMANDS:
        importlib.import_module(f"sparsecl.commands.{name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = _stop_on_sigterm()
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        if args.debug:
            traceback.print_exc()
        print(f"sparsecl: error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:  # e.g. divergence: the message says what happened and what to change
        if args.debug:
            traceback.print_exc()
        print(f"sparsecl: failed: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if args.debug:
            traceback.print_exc()
        if e.errno == errno.ENOSPC:
            print(f"sparsecl: failed: the disk is full (writing {e.filename or 'output'}); free space, then "
                  f"continue with `sparsecl resume <out folder>`", file=sys.stderr)
        else:
            print(f"sparsecl: failed: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
                  file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sparsecl: interrupted; continue with `sparsecl resume <run folder>`", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - one line for the user, the traceback with --debug
        if args.debug:
            traceback.print_exc()
        print(f"sparsecl: failed: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_on_sigterm() -> Callable[..., Any] | int | signal.Handlers | None:
    """SIGTERM (timeout, systemd, batch schedulers) stops a command like Ctrl-C: runs are marked interrupted,
    sweep workers are stopped, and ``sparsecl resume`` continues. Returns the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _interrupt)


if __name__ == "__main__":
    raise SystemExit(main())
