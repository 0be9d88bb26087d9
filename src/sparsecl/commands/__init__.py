"""One module per ``sparsecl`` subcommand; see ``sparsecl.cli``."""
