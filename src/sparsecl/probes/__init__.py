"""Training-progression diagnostics (DESIGN.md section 8): a registry of probes, name -> function.

A probe is one function ``fn(ctx: ProbeContext) -> dict[str, float]`` plus its registration with
``@register``. Keys without a '/' are headline numbers (printed by `sparsecl probe`); keys with a '/' are
details (per layer, module, head or domain). Probes live in small modules grouped by theme and are imported
at the bottom of this file so that registering is all a new probe needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sparsecl.errors import ConfigError

if TYPE_CHECKING:
    from sparsecl.probes.context import ProbeContext

ProbeFn = Callable[["ProbeContext"], dict[str, float]]


@dataclass(frozen=True)
class Probe:
    name: str
    fn: ProbeFn
    description: str
    cost: str


PROBES: dict[str, Probe] = {}


def register(name: str, description: str, cost: str) -> Callable[[ProbeFn], ProbeFn]:
    """Decorator: add ``fn`` to ``PROBES`` under ``name``."""

    def deco(fn: ProbeFn) -> ProbeFn:
        if name in PROBES:
            raise ValueError(f"probe '{name}' registered twice")
        PROBES[name] = Probe(name, fn, description, cost)
        return fn

    return deco


def resolve_probe_names(names: list[str], field: str = "probes") -> list[str]:
    """Expand ["all"] and check every name; unknown names raise ConfigError listing the valid ones."""
    if "all" in names:
        return list(PROBES)
    bad = [n for n in names if n not in PROBES]
    if bad:
        raise ConfigError(field, f"unknown probe(s) {bad}", f"choose from {list(PROBES)} or 'all'")
    out: list[str] = []
    for n in names:
        if n not in out:
            out.append(n)
    return out


from sparsecl.probes import fixedpoint, forgetting_law, geometry, hessian, plasticity  # noqa: E402,F401  (registration)
