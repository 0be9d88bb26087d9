"""One module per ``sparsecl`` subcommand; see ``sparsecl.cli``.

A command module imports at module level only what loads no torch (config, store, errors, text tables), so
building the parser and printing ``--help`` stay fast; the rest is imported inside ``run(args)`` with a
``# lazy:`` reason. A help text that needs more (the probe registry) is a ``lazy_epilog``, built only when
that help is printed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


class HelpParser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be computed when its help is printed, not when it is built."""

    epilog_fn: Callable[[], str] | None = None

    def format_help(self) -> str:
        if self.epilog_fn is not None:
            self.epilog, self.epilog_fn = self.epilog_fn(), None
        return super().format_help()


def lazy_epilog(parser: argparse.ArgumentParser, fn: Callable[[], str]) -> None:
    """Make ``fn()`` the epilog of ``parser`` (a subcommand parser built by ``sparsecl.cli``), computed on demand."""
    if not isinstance(parser, HelpParser):
        raise TypeError("lazy_epilog needs a parser made by sparsecl.cli.build_parser")
    parser.epilog_fn = fn
