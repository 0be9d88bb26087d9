"""The import structure the package docstring describes: layers in one direction, no cycle between subpackages,
and every import inside a function there for a stated reason (read from the source with ``ast``, nothing runs)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import sparsecl

SRC = Path(sparsecl.__file__).parent
REASON = re.compile(r"#\s*(optional|lazy|cycle):\s*\S")
MAX_FUNCTION_IMPORTS = 41
"""Imports inside functions today, each with its reason; raise it only for a new optional dependency or a new
light path to keep light, never to hide a cycle."""


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(SRC.rglob("*.py")):
        parts = f.relative_to(SRC.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _layer(module: str) -> str:
    """The subpackage (or top-level module) a dotted sparsecl module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "sparsecl"


def _target(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module if is_pkg else module.rsplit(".", 1)[0]
    if node.level:
        base = ".".join(base.split(".")[: len(base.split(".")) - node.level + 1])
        return [f"{base}.{node.module}" if node.module else base]
    return [node.module or ""]


def _imports() -> list[tuple[str, Path, int, str, bool]]:
    """(importing module, file, line, imported module, inside a function) for every runtime import."""
    found = []
    for module, f in _modules().items():
        is_pkg = f.name == "__init__.py"

        def visit(node: ast.AST, in_function: bool, module: str = module, f: Path = f, is_pkg: bool = is_pkg) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue  # annotations only: never executed
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for t in _target(child, module, is_pkg):
                        found.append((module, f, child.lineno, t, in_function))
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        visit(ast.parse(f.read_text(encoding="utf-8")), False)
    return found


def _edges() -> dict[tuple[str, str], list[str]]:
    """(layer, imported layer) -> the files and lines of the module-level imports that make the edge."""
    edges: dict[tuple[str, str], list[str]] = {}
    for module, f, line, target, in_function in _imports():
        if in_function or not target.startswith("sparsecl.") or _layer(target) == _layer(module):
            continue
        edges.setdefault((_layer(module), _layer(target)), []).append(f"{f.relative_to(SRC.parent)}:{line}")
    return edges


def _cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """Strongly connected components of more than one layer (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    planted = {("config", "methods"): [], ("methods", "train"): [], ("train", "config"): [], ("data", "config"): []}
    assert _cycles(planted) == [["config", "methods", "train"]]
    assert _cycles({("train", "config"): [], ("data", "config"): []}) == []


def test_no_import_cycle_between_subpackages() -> None:
    edges = _edges()
    cycles = _cycles(edges)
    detail = {tuple(c): [f"{a} -> {b}: {edges[a, b][:3]}" for (a, b) in edges if a in c and b in c] for c in cycles}
    assert not cycles, f"module-level import cycles between subpackages: {detail}"


def test_every_subpackage_imports_only_the_layers_below_it() -> None:
    layers = list(sparsecl.LAYERS)
    present = {_layer(m) for m in _modules()} - {"sparsecl"}
    assert present <= set(layers), f"place {sorted(present - set(layers))} in sparsecl.LAYERS (and its docstring)"
    upward = {f"{a} -> {b}": where[:3] for (a, b), where in _edges().items()
              if a != "sparsecl" and layers.index(b) > layers.index(a)}
    assert not upward, f"imports against the layer order of sparsecl/__init__.py: {upward}"


def test_config_imports_nothing_above_it() -> None:
    above = {t for m, _, _, t, _ in _imports() if _layer(m) == "config" and t.startswith("sparsecl.")
             and _layer(t) not in ("config", "errors", "store")}
    assert not above, f"config must stay a leaf (errors and store below it only), also inside functions: {above}"


def test_every_import_inside_a_function_states_its_reason() -> None:
    inside = [(m, f, line, t) for m, f, line, t, in_function in _imports() if in_function]
    missing, cross = [], []
    for m, f, line, t in inside:
        src = f.read_text(encoding="utf-8").splitlines()
        node_lines = " ".join(src[line - 1: line + 2])  # the statement's line (a wrapped import ends on the next)
        reason = REASON.search(node_lines)
        where = f"{f.relative_to(SRC.parent)}:{line} ({t})"
        if reason is None:
            missing.append(where)
        elif reason.group(1) == "cycle" and (not t.startswith("sparsecl.") or _layer(t) != _layer(m)):
            cross.append(where)
    assert not missing, f"imports inside functions without '# optional:', '# lazy:' or '# cycle:' reason: {missing}"
    assert not cross, f"'# cycle:' is only for two modules of one subpackage: {cross}"
    assert len(inside) <= MAX_FUNCTION_IMPORTS, (
        f"{len(inside)} imports inside functions (at most {MAX_FUNCTION_IMPORTS}): move new ones to module level")
