"""Run directories, atomic files, checkpoints and the SQLite index."""
