"""Names that become folders, and the rule that every path sparsecl writes lies under ``--out``.

Run names, arm names and sweep run ids come from config files and presets that people share; a crafted
name such as ``../../x`` or ``/etc`` must not choose where files are written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sparsecl.errors import ConfigError, UserError

MAX_NAME = 200
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")


def check_name(value: Any, field: str) -> str:
    """``value`` as a folder name: letters, digits and ``._+=-``, starting with a letter or digit, no ``..``."""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ConfigError(field, f"must be a name, got {value!r}", "use letters, digits, '.', '_', '+', '=' or '-'")
    name = str(value)
    if not _SAFE.fullmatch(name) or ".." in name or len(name) > MAX_NAME:
        raise ConfigError(field, f"{name!r} is not a safe folder name",
                          f"use letters, digits, '.', '_', '+', '=' or '-' (no '/', no '..', at most {MAX_NAME} "
                          f"characters), starting with a letter or digit")
    return name


def inside(out: Path, path: Path) -> Path:
    """``path`` if it lies under ``out`` once links are resolved; a UserError otherwise."""
    root = out.resolve()
    target = path.resolve()
    if target != root and root not in target.parents:
        raise UserError(f"'{path}' lies outside the output folder '{out}' (after resolving links); "
                        f"sparsecl writes only under --out: remove the link or choose another --out")
    return path


def check_out_dir(out: Path) -> None:
    """``--out`` must be a folder or not exist yet (its parents are created)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is an existing file, not a folder; choose a folder path")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"--out '{out}': '{parent}' is a file, not a folder; choose another --out")
