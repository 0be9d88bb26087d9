"""How ``pytest -n N`` splits the suite into work units (imported by conftest only when pytest-xdist runs it).

A unit runs on one worker, its tests in collection order. A test is its own unit, except:

- every test decorated ``@MULTIPROC`` (conftest) is in one unit, "multiproc", handed out first: these tests start
  several processes each (torchrun ranks, a Ray cluster's nodes), so on a 2-core machine they must not run at the
  same time as each other (their timeouts assume a rank or node gets about a core), and being the longest unit
  it must not be the last one to start;
- the other tests of a module that defines a module-scoped fixture are one unit, so the fixture (a trained run, a
  sweep) is built once, not once per worker.

The units are read from the test files with ``ast`` in the controller, which collects nothing itself. (xdist's own
``--dist loadgroup`` marks groups by rewriting node ids, which pytest 9.2 no longer allows: its groups are ignored
there, pytest-dev/pytest-xdist#1386.)
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling

MULTIPROC = "multiproc"


def _is_module_fixture(dec: ast.expr) -> bool:
    """``@pytest.fixture(scope="module")``."""
    return isinstance(dec, ast.Call) and any(k.arg == "scope" and isinstance(k.value, ast.Constant)
                                             and k.value.value == "module" for k in dec.keywords)


@cache
def module_units(path: Path) -> tuple[bool, frozenset[str]]:
    """(does the module define a module-scoped fixture, names of its @MULTIPROC tests)."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return False, frozenset()
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    has_fixture = any(_is_module_fixture(d) for f in funcs for d in f.decorator_list)
    multiproc = frozenset(f.name for f in funcs
                          if any(isinstance(d, ast.Name) and d.id == "MULTIPROC" for d in f.decorator_list))
    return has_fixture, multiproc


class GroupScheduling(LoadScopeScheduling):
    def __init__(self, config: pytest.Config, log: object = None) -> None:
        super().__init__(config, log)  # type: ignore[arg-type]
        self.root = config.rootpath

    def _split_scope(self, nodeid: str) -> str:
        path, _, rest = nodeid.partition("::")
        has_fixture, multiproc = module_units(self.root / path)
        if rest.split("[", 1)[0] in multiproc:
            return MULTIPROC
        return path if has_fixture else nodeid

    def _assign_work_unit(self, node: object) -> None:
        if MULTIPROC in self.workqueue:
            self.workqueue.move_to_end(MULTIPROC, last=False)
        super()._assign_work_unit(node)  # type: ignore[arg-type]
