"""Training: the per-run trainer and the experiment runner that drives arms of runs."""
