"""Typed, validated run configuration.

``sections`` and ``diagnostics`` hold the small dataclasses (one docstring per field, validation in
``__post_init__``), ``run`` the whole RunConfig, ``parse`` the YAML-to-dataclass coercion with errors that name
the dotted field, and ``experiment`` presets, overrides, arms and seeds. Every problem raises ``ConfigError``
before anything is written to disk.
"""

from sparsecl.config.diagnostics import DEFAULT_PROBES, FisherLabels, LogConfig, ProbeConfig
from sparsecl.config.experiment import (
    arm_configs,
    build_config,
    dump_yaml,
    load_experiment,
    load_preset,
    preset_names,
    read_yaml,
)
from sparsecl.config.parse import build_dataclass, parse_override, set_dotted, to_dict
from sparsecl.config.run import Arm, RunConfig
from sparsecl.config.sections import (
    DataConfig,
    DomainSpec,
    EvalConfig,
    MethodConfig,
    ModelConfig,
    PhaseSpec,
    RLConfig,
    Separator,
    SparseConfig,
    TokenizerConfig,
    TrainConfig,
)
from sparsecl.errors import ConfigError

__all__ = [
    "DEFAULT_PROBES", "Arm", "ConfigError", "DataConfig", "DomainSpec", "EvalConfig", "FisherLabels", "LogConfig",
    "MethodConfig",
    "ModelConfig", "PhaseSpec", "ProbeConfig", "RLConfig", "RunConfig", "Separator", "SparseConfig",
    "TokenizerConfig", "TrainConfig", "arm_configs", "build_config", "build_dataclass", "dump_yaml",
    "load_experiment", "load_preset", "parse_override",
    "preset_names", "read_yaml", "set_dotted", "to_dict",
]
