"""Experiments: preset + YAML file + key=value overrides, arms and seeds, resolved to RunConfigs."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sparsecl.config.parse import build_dataclass, parse_override, set_dotted, to_dict
from sparsecl.config.run import Arm, RunConfig
from sparsecl.config.sections import is_local
from sparsecl.config.yamlio import load_yaml
from sparsecl.errors import ConfigError, UserError
from sparsecl.store.paths import check_name


def preset_names() -> list[str]:
    root = resources.files("sparsecl") / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file '{path}' does not exist; pass the path of a YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"config file '{path}' is not UTF-8 text (byte {e.start}); save it as UTF-8") from e
    data = load_yaml(text, f"config file '{path}'") or {}
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping at the top level")
    return data


def load_preset(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise UserError(f"unknown preset '{name}'; choose from {preset_names()}")
    text = (resources.files("sparsecl") / "presets" / f"{name}.yaml").read_text()
    return load_yaml(text, f"preset '{name}'") or {}


def load_experiment(config_path: str | None, overrides: list[str], preset: str | None = None
                    ) -> tuple[dict[str, Any], list[Arm]]:
    """Merge preset, file and overrides into one raw mapping; split off the arms."""
    data: dict[str, Any] = {}
    if preset:
        data = load_preset(preset)
    if config_path:
        data = _deep_merge(data, resolve_paths(read_yaml(config_path), Path(config_path).resolve().parent))
    cli = resolve_paths(dict(parse_override(ov) for ov in overrides), Path.cwd())
    for k, v in cli.items():
        set_dotted(data, k, v)
    seeds = data.pop("seeds", None)
    if seeds is not None and (not isinstance(seeds, list) or not seeds
                              or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)):
        raise ConfigError("seeds", f"must be a non-empty list of integers, got {seeds!r}",
                          "write e.g. seeds: [0, 1, 2]")
    if seeds is not None:
        data["_seeds"] = seeds
    raw_arms = data.pop("arms", None)
    arms: list[Arm] = []
    if raw_arms is not None:
        if not isinstance(raw_arms, list) or not raw_arms:
            raise ConfigError("arms", "must be a non-empty list of {name, overrides}")
        for i, a in enumerate(raw_arms):
            if not isinstance(a, dict) or "name" not in a:
                raise ConfigError(f"arms[{i}]", "needs a 'name' and optional 'overrides' mapping")
            extra = set(a) - {"name", "overrides"}
            if extra:
                raise ConfigError(f"arms[{i}].{sorted(extra)[0]}", "unknown key", "use name and overrides")
            ovs = a.get("overrides") or {}
            if not isinstance(ovs, dict):
                raise ConfigError(f"arms[{i}].overrides", "must be a mapping of dotted keys to values")
            per_run = {k: v for k, v in cli.items() if k.split(".")[0] not in ("seeds", "arms")}
            arms.append(Arm(check_name(a["name"], f"arms[{i}].name"), {**ovs, **per_run}))  # command-line overrides win
    return data, arms


def _resolve_domains(value: Any, base: Path) -> Any:
    """A data.domains value with every relative local path made absolute against ``base``.

    An hf path is a hub name unless it looks local (./, ../, /, ~, a data-file suffix) or exists under ``base``.
    """
    if not isinstance(value, list):
        return value
    out = []
    for d in value:
        if isinstance(d, dict) and isinstance(d.get("path"), str) and d["path"]:
            p = Path(d["path"]).expanduser()
            local = d.get("source") != "hf" or is_local(d["path"]) or (base / p).exists()
            if local and not p.is_absolute():
                d = {**d, "path": str((base / p).resolve())}
        out.append(d)
    return out


def resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative domain paths resolved against ``base``: a config file's folder, or the cwd for overrides.

    Covers ``data.domains`` in the mapping, a dotted ``data.domains`` key, and the same inside arms' overrides.
    """
    data = dict(data)
    if isinstance(data.get("data"), dict) and "domains" in data["data"]:
        data["data"] = {**data["data"], "domains": _resolve_domains(data["data"]["domains"], base)}
    if "data.domains" in data:
        data["data.domains"] = _resolve_domains(data["data.domains"], base)
    if isinstance(data.get("arms"), list):
        data["arms"] = [{**a, "overrides": resolve_paths(a["overrides"], base)}
                        if isinstance(a, dict) and isinstance(a.get("overrides"), dict) else a
                        for a in data["arms"]]
    return data


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(data: dict[str, Any]) -> RunConfig:
    return build_dataclass(RunConfig, data, "")


def arm_configs(data: dict[str, Any], arms: list[Arm]) -> list[RunConfig]:
    """Resolve every arm (or the single run), times every seed of a ``seeds`` list, to a RunConfig.

    With seeds, run names are '<arm>-s<seed>' and ``group`` is the arm's name.
    """
    data = copy.deepcopy(data)
    seeds = data.pop("_seeds", None)
    if not arms:
        arms = [Arm(check_name(data.get("name", "run"), "name"), {})]
    out = []
    for arm in arms:
        for seed in seeds if seeds is not None else [None]:
            d = copy.deepcopy(data)
            for k, v in arm.overrides.items():
                set_dotted(d, k, v)
            d["name"] = arm.name if seed is None else f"{arm.name}-s{seed}"
            d["group"] = arm.name
            if seed is not None:
                d["seed"] = seed
            out.append(build_config(d))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ConfigError("arms", "arm names must be unique")
    return out


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
