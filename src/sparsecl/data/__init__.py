"""Domains: where text comes from, how it is split and how it becomes token batches."""
