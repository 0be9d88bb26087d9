"""YAML as people write it: standard float notation and no silently repeated keys.

PyYAML implements YAML 1.1, where ``3e-4`` (no dot, as in ``sparsecl run --help``) is a string, and where a
mapping that repeats a key silently keeps the last value. Config files, presets and ``key=value`` overrides
all go through ``load_yaml`` so they read numbers the same way.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from sparsecl.errors import UserError

# YAML 1.2 core schema floats (plus 1.1's '.inf'/'.nan' spellings that the base resolver already covers).
_FLOAT = re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
                     |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X)
_FLOAT_START = list("-+0123456789.")


class ConfigLoader(yaml.SafeLoader):
    """SafeLoader that reads 1e-3 as a float and refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key '{key}' (keep one of them)", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


# Integers keep their own resolver (it is tried first for digit-only text); the float one now matches 3e-4.
ConfigLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _ch in _FLOAT_START:
    _rs = [(tag, rx) for tag, rx in ConfigLoader.yaml_implicit_resolvers.get(_ch, [])
           if tag != "tag:yaml.org,2002:float"]
    ints = [r for r in _rs if r[0] == "tag:yaml.org,2002:int"]
    rest = [r for r in _rs if r[0] != "tag:yaml.org,2002:int"]
    ConfigLoader.yaml_implicit_resolvers[_ch] = ints + [("tag:yaml.org,2002:float", _FLOAT)] + rest


def load_yaml(text: str, source: str) -> Any:
    """Parse ``text``; a syntax error or duplicate key is a UserError naming ``source`` and the first problem."""
    try:
        return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{source} is not valid YAML: {problem}{where}") from e
