"""sparsecl: fixed sparse topologies vs catastrophic forgetting in GPT-style transformers.

Layers, lowest first; a module imports (at module level) only from its own subpackage and the layers before
it, so there is one direction of flow and no import cycle (``tests/test_architecture.py`` checks both):

    errors    the two exception types every layer raises
    rng       keyed generators: every random draw derived from (seed, key)
    store     run folders: names, atomic writes, locks, the SQLite index, checkpoints, the typed run summary
    stats     intervals, tests, the crossover and forgetting-law statistics, measure labels (numpy/scipy only)
    config    the run config: dataclasses, YAML parsing, presets, arms (checks every field it can alone)
    data      domains, sources, tokenizers, token caches, batches
    model     the GPT, its maskable linear layers, the optimizer and its learning-rate schedule
    sparse    topologies, allocation, masks, csr layers, matching, the topology report, build_model
    metrics   evaluation, continual-learning measures, summaries and tables
    methods   continual-learning methods (registry ``METHODS``)
    probes    training-progression diagnostics (registry ``PROBES``), also on saved checkpoints
    train     the trainer, objectives, trackers, preflight and the registry checks of a config
    report    statistics, figures and the HTML page of finished runs
    sweep     grids of runs on local processes or Ray
    commands  one module per subcommand; torch loads only when a command runs, so ``--help`` stays light
    cli       the ``sparsecl`` entry point

An import inside a function carries its reason on the same line: ``# optional: <package>`` (an optional
dependency), ``# lazy: <why>`` (e.g. keeping ``--help`` torch-free) or ``# cycle: <why>`` (two modules of one
subpackage that need each other).
"""

import os

__version__ = "0.1.0"

LAYERS = ("errors", "rng", "store", "stats", "config", "data", "model", "sparse", "metrics", "methods", "probes",
          "train", "report", "sweep", "commands", "cli", "__main__")
"""The layer order above, as data for the architecture test."""

# Without a passive wait policy, OpenMP spin-waits made small ops 3-30x slower on 2-core machines. It must be set
# before torch loads; every process that runs sparsecl code (the CLI, sweep workers, Ray tasks) imports this first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
