"""Plain sequential finetuning: train on each phase's domains, nothing else."""

from sparsecl.methods.base import Method


class Naive(Method):
    name = "naive"
