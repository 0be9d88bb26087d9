"""`source: hf`: a Hugging Face dataset as a domain (``pip install 'sparsecl[hf]'``).

``path`` is a local ``save_to_disk`` folder, a local .parquet/.json/.jsonl/.csv file (or a folder of them),
read through the library's own builders, or else a hub dataset name. The hub is contacted only in that last
case, when the user named a hub dataset; offline, the error says what is missing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sparsecl.config import DomainSpec
from sparsecl.config.sections import HF_FILE_BUILDERS as BUILDERS
from sparsecl.config.sections import is_local
from sparsecl.errors import UserError

INSTALL_HINT = "pip install 'sparsecl[hf]'"
SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_RECORDS: dict[tuple[str, ...], dict[str, str]] = {}


def _key(spec: DomainSpec) -> tuple[str, ...]:
    return (spec.path, spec.config_name, spec.split, spec.revision)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip().rstrip(":")


@contextlib.contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    """No progress bars for local reads (they are instant); hub downloads keep theirs."""
    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def _open_local(datasets: Any, spec: DomainSpec, where: str) -> Any:
    p = Path(spec.path).expanduser()
    if not p.exists():
        raise UserError(f"config field '{where}.path': '{p.absolute()}' does not exist (relative paths in a config "
                        f"file resolve against that file's folder, on the command line against the current directory)")
    if p.is_dir() and any((p / m).is_file() for m in SAVED_MARKERS):
        try:
            ds = datasets.load_from_disk(str(p))
        except Exception as e:  # noqa: BLE001 - any library failure becomes one line naming the field
            raise UserError(f"config field '{where}.path': could not load the save_to_disk folder '{p}' "
                            f"({_first_line(e)})") from e
        if isinstance(ds, datasets.DatasetDict):
            if spec.split not in ds:
                raise UserError(f"config field '{where}.split': '{spec.split}' is not a split of '{p}'; "
                                f"choose from {sorted(ds)}")
            ds = ds[spec.split]
        return ds
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in BUILDERS)
    kinds = {BUILDERS.get(f.suffix.lower()) for f in files}
    if not files or None in kinds or len(kinds) > 1:
        raise UserError(f"config field '{where}.path': '{p}' is neither a save_to_disk folder nor a "
                        f".parquet/.json/.jsonl/.csv file (or a folder of one kind of them); point it at one")
    if spec.split != "train":
        raise UserError(f"config field '{where}.split': local data files have the single split 'train', not "
                        f"'{spec.split}'; remove split or set it to train")
    if all(f.stat().st_size == 0 for f in files):
        raise UserError(f"config field '{where}.path': '{p}' is empty; point it at a file with rows")
    builder = kinds.pop()
    try:
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train",
                                     streaming=spec.streaming)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"config field '{where}.path': could not read '{p}' as {builder} ({_first_line(e)}); "
                        f"is it a {builder} text file?") from e


@contextlib.contextmanager
def _no_retry_chatter() -> Iterator[None]:
    """Offline, huggingface_hub logs every retry of every request; the one error line below says it all."""
    import huggingface_hub.utils.logging as hub_logging  # optional: huggingface_hub (sparsecl[hf])

    level = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    try:
        yield
    finally:
        hub_logging.set_verbosity(level)


def _open_hub(datasets: Any, spec: DomainSpec, where: str) -> Any:
    try:
        with _no_retry_chatter():
                return datasets.load_dataset(spec.path, name=spec.config_name or None, split=spec.split,
                                         streaming=spec.streaming, revision=spec.revision or None)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"config field '{where}.path': could not load hub dataset '{spec.path}'"
                        f"{f' ({spec.config_name})' if spec.config_name else ''}, split '{spec.split}' "
                        f"({_first_line(e)}); it is not in the local Hugging Face cache and the hub is unreachable "
                        f"or does not have it: check the name, config_name and split, connect to the network, "
                        f"or point path at a local file or save_to_disk folder") from e


def _column_type(ds: Any, field: str) -> str:
    feats = getattr(ds, "features", None)
    if not feats or field not in feats:
        return ""
    f = feats[field]
    dtype = getattr(f, "dtype", "")
    if dtype in ("string", "large_string"):
        return ""
    inner = getattr(f, "feature", None)  # List / Sequence of strings: joined by newlines
    if inner is not None and getattr(inner, "dtype", "") in ("string", "large_string"):
        return ""
    return str(dtype or type(f).__name__)


def _texts(ds: Any, spec: DomainSpec, where: str) -> list[str]:
    field = spec.text_field
    columns = list(getattr(ds, "column_names", None) or [])  # a streamed dataset may not know them up front
    if columns and field not in columns:
        raise UserError(f"config field '{where}.text_field': the dataset has no column '{field}'; its columns are "
                        f"{columns}")
    bad = _column_type(ds, field)
    if bad:
        raise UserError(f"config field '{where}.text_field': column '{field}' holds {bad}, not text; set "
                        f"text_field to a string column")
    docs: list[str] = []
    size, row = 0, 0
    try:
        batches = ds.select_columns([field]).iter(batch_size=1024)
    except (KeyError, ValueError) as e:
        raise UserError(f"config field '{where}.text_field': the dataset has no column '{field}' "
                        f"({_first_line(e)})") from e
    for batch in batches:
        if field not in batch:
            raise UserError(f"config field '{where}.text_field': the dataset has no column '{field}'")
        for value in batch[field]:
            row += 1
            if value is None:
                continue
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                value = "\n".join(value)
            if not isinstance(value, str):
                raise UserError(f"config field '{where}.text_field': row {row} of column '{field}' is "
                                f"{type(value).__name__}, not a string; set text_field to a text column")
            value = value.replace("\x00", "")
            if value.strip():
                docs.append(value)
                size += len(value.encode("utf-8")) + 1
            if spec.max_bytes and size >= spec.max_bytes:
                return docs
    return docs


def read_hf(spec: DomainSpec, where: str) -> list[str]:
    """The text_field of every row of the dataset (up to max_bytes), in dataset order."""
    try:
        import datasets  # optional: datasets (sparsecl[hf])
    except ImportError as e:
        raise UserError(f"config field '{where}.source': source hf needs the Python package 'datasets', which is "
                        f"not installed; run {INSTALL_HINT}") from e
    if is_local(spec.path):
        with _quiet(datasets):
            ds = _open_local(datasets, spec, where)
            docs = _texts(ds, spec, where)
    else:
        ds = _open_hub(datasets, spec, where)
        docs = _texts(ds, spec, where)
    info = getattr(ds, "info", None)
    licence = getattr(info, "license", "") if info is not None else ""
    where_from = f"local {spec.path}" if is_local(spec.path) else f"hub {spec.path}"
    _RECORDS[_key(spec)] = {
        "source": f"hf {where_from}" + (f" ({spec.config_name})" if spec.config_name else "") + f", split {spec.split}"
                  + (f", revision {spec.revision}" if spec.revision else ""),
        "package": "datasets", "version": datasets.__version__,
        "licence": licence or "not stated in the dataset's metadata; see its card"}
    return docs


def source_record(spec: DomainSpec) -> dict[str, str]:
    """What read_hf recorded about this dataset (source, package, version, licence)."""
    return dict(_RECORDS.get(_key(spec), {"source": f"hf {spec.path}", "package": "datasets", "version": "",
                                          "licence": "unknown"}))
