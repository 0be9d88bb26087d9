"""Continual-learning methods, one file each, registered by name."""

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

__all__ = ["METHODS", "Method"]
