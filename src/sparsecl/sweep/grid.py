"""Sweep files and grid expansion.

A sweep file is a run config (or ``preset: NAME`` plus changes) with two extra keys:

- ``grid``: dotted config keys mapped to lists of values; every combination is one run;
- ``arms`` (optional): named override sets, crossed with the grid; ``seeds: [..]`` is the same as
  ``grid: {seed: [..]}``.

Every run gets an id built from its overrides only, keys in sorted order (``<arm>__density-0.05__lr-0.001__s1``),
so the same sweep file always maps the same point of the grid to the same folder, whatever the grid's other values:
that is what lets a re-run find finished runs. The run's ``group`` is its id without the seed, so
statistics over seeds group exactly the runs that differ only in their seed.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

from sparsecl.config import Arm, RunConfig, load_experiment, read_yaml, set_dotted
from sparsecl.errors import ConfigError, UserError
from sparsecl.train.validate import checked_config

MAX_ID = 120


@dataclass
class SweepRun:
    """One point of the grid: its stable id, its seed-free group and its resolved config."""

    run_id: str
    group: str
    overrides: dict[str, Any]
    config: RunConfig


def _short_hash(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _safe_part(text: str) -> str:
    """Characters of a folder name only: no separators, no '..' (run ids become folders under --out)."""
    return re.sub(r"\.{2,}", "_", re.sub(r"[^A-Za-z0-9._+-]", "_", text))


def format_value(value: Any) -> str:
    """A short, filesystem-safe rendering of one override value."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return format(value, "g")
    if isinstance(value, str):
        text = _safe_part(value.replace(",", "+"))
        return text if 0 < len(text) <= 32 else _short_hash(value)
    return _short_hash(value)  # lists and mappings (e.g. a whole schedule)


def key_labels(keys: list[str]) -> dict[str, str]:
    """Label each key by its last dotted part unless two keys share it (then the full key, dots as '-')."""
    last = [k.split(".")[-1] for k in keys]
    return {k: _safe_part(lk if last.count(lk) == 1 else k.replace(".", "-")) for k, lk in zip(keys, last, strict=True)}


def run_id_for(arm: str | None, overrides: dict[str, Any], labels: dict[str, str]) -> tuple[str, str]:
    """(run id, group id) of one grid point; the seed is the last part of the id and absent from the group."""
    parts = [arm] if arm else []
    parts += [f"{labels[k]}-{format_value(overrides[k])}" for k in sorted(overrides) if k != "seed"]
    group = "__".join(parts) or "run"
    if len(group) > MAX_ID:
        group = f"{group[:MAX_ID - 10]}~{_short_hash(group)}"
    run_id = f"{group}__s{overrides['seed']}" if "seed" in overrides else group
    return run_id, group


_ABSENT = object()


def parse_grid(raw: Any) -> dict[str, list[Any]]:
    """A sweep file without ``grid`` runs its arms (times seeds); a ``grid`` that is present must not be empty."""
    if raw is _ABSENT:
        return {}
    if raw is None or raw == {}:
        raise ConfigError("grid", "is empty", "list at least one key, e.g. grid: {seed: [0, 1, 2]}, or remove "
                          "'grid' to run the arms once")
    if not isinstance(raw, dict):
        raise ConfigError("grid", "must map dotted config keys to lists of values",
                          "write e.g. grid: {sparse.density: [0.05, 1.0], seed: [0, 1, 2]}")
    grid: dict[str, list[Any]] = {}
    for k, v in raw.items():
        if not isinstance(k, str) or not k:
            raise ConfigError("grid", f"key {k!r} is not a dotted config key")
        if not isinstance(v, list) or not v:
            raise ConfigError(f"grid.{k}", f"must be a non-empty list of values, got {v!r}",
                              f"write e.g. {k}: [a, b]")
        if k in ("name", "group"):
            raise ConfigError(f"grid.{k}", "names are derived from the grid", "remove it from the grid")
        grid[k] = v
    return grid


def load_sweep(path: str | None, overrides: list[str], preset: str | None = None) -> tuple[dict[str, Any],
                                                                                            list[Arm],
                                                                                            dict[str, list[Any]]]:
    """Read a sweep file (plus preset and key=value overrides) into base data, arms and grid."""
    if path is None and preset is None:
        raise UserError("nothing to sweep: give a SWEEP.yaml or --preset NAME (see `sparsecl sweep --help`)")
    file_preset = read_yaml(path).get("preset") if path else None
    if file_preset is not None and not isinstance(file_preset, str):
        raise ConfigError("preset", f"must be a preset name, got {file_preset!r}")
    data, arms = load_experiment(path, overrides, preset or file_preset)
    data.pop("preset", None)
    grid = parse_grid(data.pop("grid", _ABSENT))
    seeds = data.pop("_seeds", None)
    if seeds is not None:
        if "seed" in grid:
            raise ConfigError("seeds", "both 'seeds' and grid.seed are given", "keep one of them")
        grid["seed"] = seeds
    return data, arms, grid


def expand(data: dict[str, Any], arms: list[Arm], grid: dict[str, list[Any]]) -> list[SweepRun]:
    """Every arm times every grid combination, validated, with unique stable ids (seed varies fastest)."""
    keys = [k for k in grid if k != "seed"] + (["seed"] if "seed" in grid else [])
    labels = key_labels(keys)
    arm_list: list[Arm | None] = list(arms) if arms else [None]
    runs: list[SweepRun] = []
    for arm in arm_list:
        for values in itertools.product(*(grid[k] for k in keys)):
            ovs = dict(zip(keys, values, strict=True))
            run_id, group = run_id_for(arm.name if arm else None, ovs, labels)
            d = copy.deepcopy(data)
            for k, v in (arm.overrides if arm else {}).items():
                set_dotted(d, k, v)
            for k, v in ovs.items():
                set_dotted(d, k, copy.deepcopy(v))
            d["name"], d["group"] = run_id, group
            try:
                cfg = checked_config(d)
            except ConfigError as e:
                where = f"arm '{arm.name}', " if arm else ""
                raise ConfigError(e.field, f"{str(e).split(': ', 1)[1]} (in {where}grid point {ovs})") from e
            runs.append(SweepRun(run_id, group, {**(arm.overrides if arm else {}), **ovs}, cfg))
    ids = [r.run_id for r in runs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ConfigError("grid", f"two grid points map to the same run id {dup[0]!r}",
                          "give arms distinct names and grid values distinct renderings")
    return runs
