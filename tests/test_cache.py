"""Token caches: same tokens as the in-memory loaders, invalidation, corruption recovery, concurrent builders."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsecl.config import DataConfig, DomainSpec
from sparsecl.data.cache import read_window, token_splits
from sparsecl.data.domains import load_documents, split_documents
from sparsecl.data.tokenizer import BYTE, encode_docs


def _txt(path: Path, n: int, word: str = "alpha") -> Path:
    path.write_text("\n\n".join(f"{word} document {i}\nsecond line {i * 7}" for i in range(n)) + "\n")
    return path


def _data(tmp_path: Path, spec: DomainSpec) -> DataConfig:
    return DataConfig(domains=[spec], val_fraction=0.2, cache_dir=str(tmp_path / "cache"))


def _entries(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache" / "tokens").iterdir())


@pytest.mark.parametrize("source", ["txt", "dir", "jsonl"])
def test_streamed_cache_equals_the_list_loaders(tmp_path: Path, source: str) -> None:
    docs = [f"doc {i} é\nline two {i % 5}" for i in range(300)] + ["doc 1 é\nline two 1"]  # one duplicate
    if source == "txt":
        (tmp_path / "c.txt").write_text("\n\n".join(docs))
        path = tmp_path / "c.txt"
    elif source == "dir":
        path = tmp_path / "d"
        path.mkdir()
        for i, d in enumerate(docs[:40]):
            (path / f"{i:03d}.txt").write_text(d)
    else:
        path = tmp_path / "c.jsonl"
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    spec = DomainSpec(name="x", source=source, path=str(path), max_bytes=5000)
    data = _data(tmp_path, spec)
    streams, meta = token_splits(spec, data, BYTE)
    train, val = split_documents(load_documents(spec), data.split_salt, data.val_fraction)
    assert streams["train"].dtype == np.uint8 and isinstance(streams["train"], np.memmap)
    assert np.array_equal(read_window(streams["train"], 7, 50), np.asarray(streams["train"])[7:57])
    assert np.array_equal(streams["train"], encode_docs(train)) and np.array_equal(streams["val"], encode_docs(val))
    assert (meta["train"]["docs"], meta["val"]["docs"]) == (len(train), len(val))
    assert meta["train"]["bytes"] == sum(len(d.encode()) + 1 for d in train)


def test_changed_content_gets_a_new_entry(tmp_path: Path) -> None:
    f = _txt(tmp_path / "c.txt", 200)
    spec = DomainSpec(name="x", source="txt", path=str(f))
    first = np.array(token_splits(spec, _data(tmp_path, spec), BYTE)[0]["train"])
    assert len(_entries(tmp_path)) == 1
    again = token_splits(spec, _data(tmp_path, spec), BYTE)[0]["train"]
    assert np.array_equal(first, again) and len(_entries(tmp_path)) == 1  # reused
    _txt(f, 200, word="gamma")  # same length, new bytes
    changed = token_splits(spec, _data(tmp_path, spec), BYTE)[0]["train"]
    assert len(_entries(tmp_path)) == 2
    train, _ = split_documents(load_documents(spec), "sparsecl", 0.2)
    assert np.array_equal(changed, encode_docs(train)) and not np.array_equal(changed, first)


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_meta", "bad_meta"])
def test_partial_or_corrupt_entry_is_rebuilt_not_used(tmp_path: Path, damage: str) -> None:
    f = _txt(tmp_path / "c.txt", 300)
    spec = DomainSpec(name="x", source="txt", path=str(f))
    good = np.array(token_splits(spec, _data(tmp_path, spec), BYTE)[0]["train"])
    [entry] = _entries(tmp_path)
    train = entry / "train.bin"
    if damage == "truncate":
        with train.open("r+b") as fh:
            fh.truncate(train.stat().st_size - 100)
    elif damage == "flip":
        raw, before = bytearray(train.read_bytes()), train.stat().st_mtime_ns
        raw[len(raw) // 2] ^= 0x01
        train.write_bytes(bytes(raw))
        os.utime(train, ns=(before + 10**9, before + 10**9))  # a later write, even where timestamps are coarse
    elif damage == "no_meta":
        (entry / "meta.json").unlink()
    else:
        (entry / "meta.json").write_text("{")
    got = token_splits(spec, _data(tmp_path, spec), BYTE)[0]["train"]
    assert np.array_equal(got, good)
    assert [p.name for p in _entries(tmp_path)] == [entry.name]  # rebuilt in place, nothing left over
    assert train.stat().st_size == len(good)


BUILD = """
import sys, zlib, numpy as np
from sparsecl.config import DataConfig, DomainSpec
from sparsecl.data.cache import read_window, token_splits
from sparsecl.data.tokenizer import BYTE
spec = DomainSpec(name="x", source="txt", path=sys.argv[1])
s, meta = token_splits(spec, DataConfig(domains=[spec], val_fraction=0.2, cache_dir=sys.argv[2]), BYTE)
print(zlib.crc32(np.ascontiguousarray(s["train"]).tobytes()), meta["train"]["tokens"])
"""


def test_two_processes_building_the_same_entry_do_not_corrupt_it(tmp_path: Path) -> None:
    f = _txt(tmp_path / "c.txt", 60_000)  # ~2 MB: both builds overlap in time
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, str(f), str(tmp_path / "cache")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0]
    [entry] = _entries(tmp_path)  # one entry, no temporary folders left behind
    spec = DomainSpec(name="x", source="txt", path=str(f))
    train, _ = split_documents(load_documents(spec), "sparsecl", 0.2)
    assert np.array_equal(np.fromfile(entry / "train.bin", dtype=np.uint8), encode_docs(train))
    assert list((tmp_path / "cache" / "tokens").glob(".*")) == []
