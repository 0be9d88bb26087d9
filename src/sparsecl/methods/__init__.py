"""Continual-learning methods, one file each, registered by name."""

from sparsecl.methods.base import Method
from sparsecl.methods.joint import Joint
from sparsecl.methods.naive import Naive

METHODS: dict[str, type[Method]] = {m.name: m for m in (Naive, Joint)}

__all__ = ["METHODS", "Method"]
