"""The one validation pass that runs before a command writes anything under ``--out``.

Config fields are checked when the config is built, the names registries own by ``validate.check_config``
(first thing here); what needs the machine or the filesystem is checked here too:
where each run folder lands, whether another process trains it, the device and tracker packages (the
vocabulary against the tokenizer is a config check; ``sparsecl run`` then loads every domain, also before
writing). A failure here leaves ``--out`` exactly as it was, so the corrected command just runs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sparsecl.config import RunConfig
from sparsecl.errors import ConfigError, UserError
from sparsecl.store.lock import check_unlocked
from sparsecl.store.paths import check_out_dir, inside
from sparsecl.train.parallel import check_config as check_parallel
from sparsecl.train.tracking import check_trackers
from sparsecl.train.validate import check_config


def check_device(name: str) -> None:
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device", "is 'cuda' but no CUDA device is visible", "use device=cpu or auto")


def preflight(cfgs: list[RunConfig], out: Path, run_ids: list[str] | None = None, check_devices: bool = True) -> None:
    """Raise the first problem any of ``cfgs`` would hit; writes nothing. ``run_ids`` default to the names.

    ``check_devices=False`` when the runs execute elsewhere (a Ray cluster): this machine's devices do not count.
    """
    for c in cfgs:
        check_config(c)
    check_out_dir(out)
    for c, rid in zip(cfgs, run_ids or [c.name for c in cfgs], strict=True):
        inside(out, out / rid)
        check_unlocked(out / rid)
        if check_devices:
            check_device(c.device)
        check_parallel(c)
        check_trackers(c.log)
        if c.log.tensorboard and c.log.dir:
            try:
                inside(out, Path(c.log.dir) / rid)
            except UserError as e:
                raise ConfigError("log.dir", f"'{c.log.dir}' is outside --out '{out}'",
                                  "leave log.dir empty (<run>/tensorboard) or point it under --out") from e
