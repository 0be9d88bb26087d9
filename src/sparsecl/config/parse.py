"""Building config dataclasses from plain YAML data, with errors that name the dotted field."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal

from sparsecl.config.run import RunConfig
from sparsecl.config.sections import DataConfig, PhaseSpec
from sparsecl.config.yamlio import load_yaml
from sparsecl.errors import ConfigError, UserError


def check_finite(value: Any, path: str) -> None:
    """NaN and infinities are never a meaningful setting; name the field that holds one."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(path, f"must be a finite number, got {value}", "write a plain number such as 3e-4")
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite(v, f"{path}[{i}]")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is type(None) and value is None:  # None: an optional field left unset
        return value
    if tp is Any:
        check_finite(value, path)
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {type(value).__name__} {value!r}")
        return build_dataclass(tp, value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(path, f"must be one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return _coerce(value, a, path)
            except ConfigError:
                continue
        raise ConfigError(path, f"expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(path, f"expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {type(value).__name__} {value!r}")
        check_finite(value, path)
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {value!r}")
        check_finite(value, path)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    raise ConfigError(path, f"unsupported type {tp}")


def _normalise(cls: type, data: dict[str, Any], path: str) -> dict[str, Any]:
    """Accept the short forms a person would write."""
    data = dict(data)
    if cls is RunConfig:
        sched = data.get("schedule")
        if isinstance(sched, str):
            data["schedule"] = [{"domains": [d.strip()]} for d in sched.split(",") if d.strip()]
        elif isinstance(sched, list):
            data["schedule"] = [
                {"domains": [p]} if isinstance(p, str)
                else ({**{k: v for k, v in p.items() if k != "domain"}, "domains": [p["domain"]]}
                      if isinstance(p, dict) and "domain" in p else p)
                for p in sched
            ]
    if cls is RunConfig and isinstance(data.get("probes"), str):
        data["probes"] = [n.strip() for n in data["probes"].split(",") if n.strip()]
    if cls is DataConfig and isinstance(data.get("domains"), list):
        data["domains"] = [{"name": d} if isinstance(d, str) else d for d in data["domains"]]
    if cls is DataConfig and isinstance(data.get("domains"), str):
        data["domains"] = [{"name": d.strip()} for d in data["domains"].split(",") if d.strip()]
    if cls is DataConfig and isinstance(data.get("tokenizer"), str):
        data["tokenizer"] = {"kind": data["tokenizer"]}
    if cls is PhaseSpec and isinstance(data.get("domains"), str):
        data["domains"] = [d.strip() for d in data["domains"].split(",") if d.strip()]
    return data


def build_dataclass(cls: type, data: dict[str, Any], path: str) -> Any:
    data = _normalise(cls, data, path)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else key
        if key not in names:
            raise ConfigError(sub, "unknown key", f"valid keys here are {sorted(names)}")
        kwargs[key] = _coerce(value, hints[key], sub)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(path or cls.__name__, str(e)) from e


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(key, f"'{p}' is not a mapping, so '{key}' cannot be set")
        cur = nxt
    cur[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise UserError(f"override '{text}' is not key=value; write e.g. sparse.density=0.1")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"override '{text}' has no key; write e.g. sparse.density=0.1")
    try:
        value = load_yaml(raw, f"override '{text}'") if raw.strip() else ""
    except UserError:
        value = raw  # e.g. schedule=a:b stays the string the user typed; the field's type check judges it
    return key, value
