"""Continual-learning methods, one file each, registered by name; ``build_method`` makes one from its config."""

from typing import Any

from sparsecl.config import RunConfig, build_dataclass
from sparsecl.errors import ConfigError
from sparsecl.methods.agem import AGEM
from sparsecl.methods.align import Align
from sparsecl.methods.base import Method
from sparsecl.methods.derpp import DERPP
from sparsecl.methods.ewc import EWC
from sparsecl.methods.expand import Expand
from sparsecl.methods.genreplay import GenReplay
from sparsecl.methods.joint import Joint
from sparsecl.methods.lora import LoRA
from sparsecl.methods.lwf import LwF
from sparsecl.methods.merge import Merge
from sparsecl.methods.naive import Naive
from sparsecl.methods.olora import OLoRA
from sparsecl.methods.replay import Replay
from sparsecl.methods.rigl import RigL
from sparsecl.methods.sam import SAM
from sparsecl.methods.si import SI
from sparsecl.methods.simreplay import SimReplay
from sparsecl.methods.sparseupdate import SparseUpdate

METHODS: dict[str, type[Method]] = {m.name: m for m in (Naive, Joint, EWC, SI, Replay, DERPP, LwF, AGEM, SAM, Expand,
                                                        GenReplay, SimReplay)}
METHODS.update({m.name: m for m in (SparseUpdate, RigL, Align, LoRA, OLoRA, Merge)})



def build_method(name: str, params: dict[str, Any]) -> Method:
    """The one place a method is made from its config: ``params`` is parsed once, into the method's typed
    ``Params``, which the method holds. Raises ConfigError naming the bad key."""
    if name not in METHODS:
        raise ConfigError("method.name", f"unknown method '{name}'", f"choose from {sorted(METHODS)}")
    cls = METHODS[name]
    return cls(build_dataclass(cls.Params, params, "method.params"))


def method_for(cfg: RunConfig) -> Method:
    """The run's method, its params also checked against the whole run (e.g. a buffer against block_size)."""
    method = build_method(cfg.method.name, cfg.method.params)
    method.validate_run(cfg)
    return method


__all__ = ["METHODS", "Method", "build_method", "method_for"]
