"""The GPT model."""

from sparsecl.model.gpt import GPT, MaskableLinear

__all__ = ["GPT", "MaskableLinear"]
