"""Continual-learning metrics as pure functions of a results matrix, and the evaluator that fills it."""
