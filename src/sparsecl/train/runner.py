"""Run an experiment (one or more arms) into an output folder, or resume one.

Everything that can be wrong with the input is checked before the first file is written: configs are
validated, ``preflight`` checks paths, device, trackers and vocabulary, and every domain is loaded first.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, cast

import yaml

from sparsecl.config import RunConfig, build_config, dump_yaml, to_dict
from sparsecl.data.domains import Domain, hygiene_warnings, load_domains
from sparsecl.data.tokenizer import check_vocab, saved_tokenizer
from sparsecl.errors import UserError
from sparsecl.store.atomic import atomic_write_text
from sparsecl.store.checkpoint import latest_tag
from sparsecl.store.index import INDEX_NAME, Index
from sparsecl.store.record import RunSummary, read_summary
from sparsecl.train import parallel
from sparsecl.train.preflight import preflight
from sparsecl.train.trainer import Trainer, pick_device


def print_hygiene_warnings(lines: list[str]) -> None:
    for line in lines:
        print(f"sparsecl: warning: data hygiene: {line} (details: `sparsecl domains --check CONFIG`)",
              file=sys.stderr)


def load_all_domains(cfgs: list[RunConfig], run_dirs: list[Path] | None = None,
                     warn: bool = False) -> list[dict[str, Domain]]:
    """Every arm's tokenized domains, shared between arms with the same data; an arm whose run folder already
    holds a tokenizer (a resume) uses that one. ``warn`` prints hygiene problems."""
    cache: dict[str, dict[str, Domain]] = {}
    out = []
    for i, c in enumerate(cfgs):
        saved = saved_tokenizer(run_dirs[i], c.data.tokenizer) if run_dirs else None
        key = json.dumps([c.model.block_size, to_dict(c.data), saved.fingerprint if saved else None],
                         sort_keys=True)
        if key not in cache:
            cache[key] = load_domains(c.data, c.model.block_size, saved)
            if warn:
                print_hygiene_warnings(hygiene_warnings(c.data, cache[key]))
        check_vocab(next(iter(cache[key].values())).tokenizer, c.model.vocab_size)
        out.append(cache[key])
    return out


def run_state(run_dir: Path) -> str:
    if (run_dir / "summary.json").is_file():
        return "done"
    if (run_dir / "config.yaml").is_file():
        return "partial"
    return "new"


def has_checkpoint(run_dir: Path) -> bool:
    return latest_tag(run_dir / "ckpt") is not None


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config as stored, minus what cannot change results (threads, trackers): reruns may change these."""
    d = dict(cfg)
    d.pop("threads", None)
    d.pop("log", None)
    return d


def config_matches(run_dir: Path, cfg: RunConfig) -> bool:
    """Whether ``run_dir`` holds a run of ``cfg`` up to settings that cannot change its results."""
    stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    return _comparable(stored) == _comparable(yaml.safe_load(dump_yaml(cfg)))


def plan_runs(cfgs: list[RunConfig], out: Path) -> list[str]:
    """Each run's state, checked before anything is written: 'done' (reused), 'resume' is refused, 'new' runs.

    A folder whose run never reached a checkpoint (e.g. it failed at once) counts as new: starting it afresh
    is what resuming it would do, so the corrected command may replace its config.
    """
    states = []
    for c in cfgs:
        rd = out / c.name
        state = run_state(rd)
        if state == "partial" and has_checkpoint(rd):
            raise UserError(f"run folder '{rd}' holds an unfinished run; continue it with "
                            f"`sparsecl resume {rd}` or choose another --out")
        if state == "done" and not config_matches(rd, c):
            raise UserError(f"run folder '{rd}' holds a finished run with a different config; "
                            f"choose another --out")
        states.append("done" if state == "done" else "new")
    return states


def run_experiment(cfgs: list[RunConfig], out: Path, progress_bar: bool = True) -> list[RunSummary]:
    """Train every arm in order; a finished arm with the same config is reused, not retrained.

    Everything is validated (configs, device, trackers, data, existing folders) before the first write.
    """
    parallel.start(pick_device(cfgs[0].device))
    preflight(cfgs, out)
    domains = load_all_domains(cfgs, [out / c.name for c in cfgs], warn=parallel.is_main())
    states = plan_runs(cfgs, out)
    parallel.barrier()  # under torchrun: every rank checked everything before rank 0 writes
    if parallel.is_main():
        out.mkdir(parents=True, exist_ok=True)
        for c, state in zip(cfgs, states, strict=True):
            # every arm's config first, so that `sparsecl resume` also starts arms a kill kept from starting
            if state == "new":
                atomic_write_text(out / c.name / "config.yaml", dump_yaml(c))
    index = _open_index(out / INDEX_NAME)
    summaries: list[RunSummary] = []
    try:
        for c, doms, state in zip(cfgs, domains, states, strict=True):
            rd = out / c.name
            if state == "done":
                summaries.append(read_summary(rd))
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


def resume(path: Path, progress_bar: bool = True) -> list[RunSummary]:
    """Continue every unfinished run under ``path`` from its last checkpoint (from the start if it has none)."""
    runs = find_runs(path)
    cfgs = [build_config(yaml.safe_load((rd / "config.yaml").read_text())) for rd in runs]
    parallel.start(pick_device(cfgs[0].device))
    for rd, c in zip(runs, cfgs, strict=True):
        preflight([c], rd.parent, [rd.name])
    domains = load_all_domains(cfgs, runs)
    done = [run_state(rd) == "done" for rd in runs]
    parallel.barrier()
    summaries: list[RunSummary] = []
    for rd, c, doms, finished in zip(runs, cfgs, domains, done, strict=True):
        if finished:
            summaries.append(read_summary(rd))
            continue
        index = _open_index(rd.parent / INDEX_NAME)
        try:
            summaries.append(Trainer(c, doms, rd, index, rd.name, progress_bar).run(resume=True))
        finally:
            index.close()
    return summaries


def _open_index(path: Path) -> Index:
    """The run index; under torchrun only rank 0 opens (and writes) it."""
    return Index(path) if parallel.is_main() else cast(Index, parallel.NoIndex())
