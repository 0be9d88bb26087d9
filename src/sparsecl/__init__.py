"""sparsecl: fixed sparse topologies vs catastrophic forgetting in GPT-style transformers."""

__version__ = "0.1.0"
