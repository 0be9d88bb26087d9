"""Run an experiment (one or more arms) into an output folder, or resume one.

Everything that can be wrong with the input is checked before the first file is written: configs are
validated and every domain is loaded first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from sparsecl.config import RunConfig, build_config, dump_yaml, to_dict
from sparsecl.data.domains import Domain, load_domains
from sparsecl.data.tokenizer import check_vocab, saved_tokenizer
from sparsecl.errors import UserError
from sparsecl.store.atomic import atomic_write_text
from sparsecl.store.index import INDEX_NAME, Index
from sparsecl.train.trainer import Trainer


def load_all_domains(cfgs: list[RunConfig], run_dirs: list[Path] | None = None) -> list[dict[str, Domain]]:
    """Every arm's tokenized domains, shared between arms with the same data; an arm whose run folder already
    holds a tokenizer (a resume) uses that one."""
    cache: dict[str, dict[str, Domain]] = {}
    out = []
    for i, c in enumerate(cfgs):
        saved = saved_tokenizer(run_dirs[i], c.data.tokenizer) if run_dirs else None
        key = json.dumps([c.model.block_size, to_dict(c.data), saved.fingerprint if saved else None],
                         sort_keys=True)
        if key not in cache:
            cache[key] = load_domains(c.data, c.model.block_size, saved)
        check_vocab(next(iter(cache[key].values())).tokenizer, c.model.vocab_size)
        out.append(cache[key])
    return out


def run_state(run_dir: Path) -> str:
    if (run_dir / "summary.json").is_file():
        return "done"
    if (run_dir / "config.yaml").is_file():
        return "partial"
    return "new"


def run_experiment(cfgs: list[RunConfig], out: Path, progress_bar: bool = True) -> list[dict[str, Any]]:
    """Train every arm in order; a finished arm with the same config is reused, not retrained."""
    domains = load_all_domains(cfgs, [out / c.name for c in cfgs])
    for c in cfgs:
        rd = out / c.name
        state = run_state(rd)
        if state == "partial":
            raise UserError(f"run folder '{rd}' holds an unfinished run; continue it with "
                            f"`sparsecl resume {rd}` or choose another --out")
        if state == "done" and (rd / "config.yaml").read_text() != dump_yaml(c):
            raise UserError(f"run folder '{rd}' holds a finished run with a different config; "
                            f"choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for c in cfgs:  # every arm's config first, so that `sparsecl resume` also starts arms a kill kept from starting
        if run_state(out / c.name) == "new":
            (out / c.name).mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / c.name / "config.yaml", dump_yaml(c))
    index = Index(out / INDEX_NAME)
    summaries = []
    try:
        for c, doms in zip(cfgs, domains, strict=True):
            rd = out / c.name
            if run_state(rd) == "done":
                summaries.append(json.loads((rd / "summary.json").read_text()))
                continue
            summaries.append(Trainer(c, doms, rd, index, c.name, progress_bar).run())
    finally:
        index.close()
    return summaries


def find_runs(path: Path) -> list[Path]:
    if (path / "config.yaml").is_file():
        return [path]
    runs = sorted(p for p in path.iterdir() if (p / "config.yaml").is_file()) if path.is_dir() else []
    if not runs:
        raise UserError(f"'{path}' is neither a run folder (with config.yaml) nor an output folder holding "
                        f"runs; pass the folder given to `sparsecl run --out`")
    return runs


def resume(path: Path, progress_bar: bool = True) -> list[dict[str, Any]]:
    """Continue every unfinished run under ``path`` from its last checkpoint (from the start if it has none)."""
    runs = find_runs(path)
    cfgs = [build_config(yaml.safe_load((rd / "config.yaml").read_text())) for rd in runs]
    domains = load_all_domains(cfgs, runs)
    summaries = []
    for rd, c, doms in zip(runs, cfgs, domains, strict=True):
        if run_state(rd) == "done":
            summaries.append(json.loads((rd / "summary.json").read_text()))
            continue
        index = Index(rd.parent / INDEX_NAME)
        try:
            summaries.append(Trainer(c, doms, rd, index, rd.name, progress_bar).run(resume=True))
        finally:
            index.close()
    return summaries
