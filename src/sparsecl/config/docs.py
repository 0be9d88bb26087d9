"""Every config key with its type, default and documentation, read from the dataclasses themselves.

A field is documented by the string literal under it (the convention of every section), so ``sparsecl run
--help`` lists exactly the keys the parser accepts, and a new field appears there the moment it is declared.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from typing import Any, Literal, NamedTuple

from sparsecl.config.run import RunConfig


class Key(NamedTuple):
    key: str
    """Dotted path; ``[]`` marks the items of a list (``data.domains[].path``)."""
    kind: str
    """The value's type as a person writes it, e.g. 'int', 'cosine|constant', 'list of str'."""
    default: str
    """The default as YAML would show it; '' for lists of sections."""
    doc: str


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body (whitespace collapsed)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for stmt, nxt in zip(body, body[1:], strict=False):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _section(tp: Any) -> type | None:
    """The dataclass a field holds (directly or as list items), if any."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) is list:
        return _section(typing.get_args(tp)[0])
    return None


def _kind(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin is list:
        return f"list of {_kind(args[0])}"
    if origin is dict:
        return "mapping"
    if args and type(None) in args:
        return " or ".join(_kind(a) for a in args if a is not type(None)) + " or null"
    return getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value) if not value or value.strip() != value else value
    return str(value)


def config_keys(cls: type = RunConfig, prefix: str = "") -> list[Key]:
    """Every leaf key under ``cls`` in declaration order; sections (nested dataclasses) are expanded."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out: list[Key] = []
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        section = _section(tp)
        if section is not None:
            items = typing.get_origin(tp) is list
            out.append(Key(key, "list of sections" if items else "section", "", docs.get(f.name, "")))
            out += config_keys(section, f"{key}[]." if items else f"{key}.")
        else:
            out.append(Key(key, _kind(tp), _default(f), docs.get(f.name, "")))
    return out


def keys_help(width: int = 118, column: int = 34) -> str:
    """The key list of ``sparsecl run --help``: one entry per key, its type and default, then its doc."""
    lines = []
    for k in config_keys():
        meta = (k.kind if not k.default else f"{k.kind} = {k.default}").replace(" ", NBSP)  # kept on one line
        head = f"  {k.key}"
        text = f"{k.doc} [{meta}]" if k.doc else f"[{meta}]"
        if len(head) + 1 > column:
            lines.append(head)
            head = ""
        lines += textwrap.wrap(text, width, initial_indent=head.ljust(column), subsequent_indent=" " * column,
                               break_on_hyphens=False)
    return "\n".join(lines).replace(NBSP, " ")


NBSP = "\xa0"
