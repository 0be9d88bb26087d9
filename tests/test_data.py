"""Domains: built-ins exist offline, local loaders, a deterministic disjoint split, byte tokens."""

import json
from pathlib import Path

import numpy as np
import pytest

from sparsecl.config import DataConfig, DomainSpec
from sparsecl.data.domains import BUILTINS, load_documents, load_domains, split_documents
from sparsecl.data.stream import sample_windows, val_windows
from sparsecl.data.tokenizer import DOC_SEP, decode, encode_docs
from sparsecl.errors import UserError
from sparsecl.rng import keyed_generator


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_domains_split_disjoint_and_deterministic(name: str) -> None:
    size = 1_000_000 if name == "legal" else 60_000  # a licence family is one document of 2-100 KB
    docs = load_documents(DomainSpec(name=name, max_bytes=size))
    assert len(docs) >= 10 and len(set(docs)) == len(docs)
    tr, va = split_documents(docs, "sparsecl", 0.1)
    assert tr and va
    assert not set(tr) & set(va)
    assert len(tr) + len(va) == len(docs)
    assert (tr, va) == split_documents(load_documents(DomainSpec(name=name, max_bytes=size)), "sparsecl", 0.1)
    assert 0.03 < len(va) / len(docs) < 0.25


def test_at_least_four_distinct_builtins() -> None:
    firsts = {name: load_documents(DomainSpec(name=name, max_bytes=5_000))[0][:50] for name in BUILTINS}
    assert len(set(firsts.values())) == len(BUILTINS) >= 4
    assert sum(b.synthetic for b in BUILTINS.values()) >= 3


def test_split_depends_on_salt() -> None:
    docs = [f"document number {i}" for i in range(400)]
    a = split_documents(docs, "x", 0.2)[1]
    b = split_documents(docs, "y", 0.2)[1]
    assert a != b


def test_txt_dir_and_jsonl_loaders(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first doc line 1\nline 2\n\n\nsecond doc\n\nthird doc\n")
    assert load_documents(DomainSpec(name="t", source="txt", path=str(tmp_path / "a.txt"))) == [
        "first doc line 1\nline 2", "second doc", "third doc"]
    d = tmp_path / "folder"
    (d / "sub").mkdir(parents=True)
    (d / "x.py").write_text("print(1)\n")
    (d / "sub" / "y.md").write_text("# title\n")
    assert load_documents(DomainSpec(name="d", source="dir", path=str(d))) == ["# title", "print(1)"]
    j = tmp_path / "r.jsonl"
    j.write_text(json.dumps({"body": "alpha"}) + "\n\n" + json.dumps({"body": "beta", "x": 1}) + "\n")
    assert load_documents(DomainSpec(name="j", source="jsonl", path=str(j), text_field="body")) == ["alpha", "beta"]
    with pytest.raises(UserError, match="no field 'text'"):
        load_documents(DomainSpec(name="j", source="jsonl", path=str(j)))


def test_empty_and_missing_domains_are_user_errors(tmp_path: Path) -> None:
    (tmp_path / "e.txt").write_text("\n\n   \n")
    with pytest.raises(UserError, match="'e' is empty"):
        load_documents(DomainSpec(name="e", source="txt", path=str(tmp_path / "e.txt")))
    with pytest.raises(UserError, match="does not exist"):
        load_documents(DomainSpec(name="m", source="txt", path=str(tmp_path / "missing.txt")))
    with pytest.raises(UserError, match="not a built-in"):
        load_documents(DomainSpec(name="nope"))


def test_byte_tokens_and_separators() -> None:
    arr = encode_docs(["hé", "ab"])
    assert arr.tolist() == [104, 195, 169, DOC_SEP, 97, 98, DOC_SEP]
    assert decode(arr[:3]) == "hé"


def test_batches_are_keyed_not_stateful() -> None:
    streams = [np.arange(1000, dtype=np.uint8) % 200, np.full(500, 7, dtype=np.uint8)]
    a = sample_windows(streams, 8, 16, keyed_generator(0, "train", 1, 5))
    b = sample_windows(streams, 8, 16, keyed_generator(0, "train", 1, 5))
    c = sample_windows(streams, 8, 16, keyed_generator(0, "train", 1, 6))
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])
    x, y = a
    assert x.shape == (8, 16) and np.array_equal(x[:, 1:], y[:, :-1])


def test_validation_windows_are_fixed_and_non_overlapping() -> None:
    s = np.arange(200, dtype=np.uint8)
    x, y = val_windows(s, 100, 32, keyed_generator(0, "val", "d"))
    assert x.shape == (6, 32)  # (200 - 1) // 32 windows fit
    starts = x[:, 0].tolist()
    assert all(b - a >= 32 for a, b in zip(starts, starts[1:], strict=False))  # no target scored twice
    t = np.arange(193, dtype=np.uint8)  # exactly 6 windows fit: they tile the stream
    x, y = val_windows(t, 100, 32, keyed_generator(0, "val", "d"))
    assert x.shape == (6, 32) and x[1, 0] == 32 and y[0, -1] == 32 and y[-1, -1] == 192


def test_load_domains_rejects_too_little_text(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_text("tiny\n\nalso tiny\n")
    data = DataConfig(domains=[DomainSpec(name="s", source="txt", path=str(tmp_path / "s.txt"))], val_fraction=0.5)
    with pytest.raises(UserError, match="fewer than one context window"):
        load_domains(data, 64)


def test_keyed_generator_seed_is_the_hash_of_seed_and_key() -> None:
    """Masks (key = layer name) and batches (key = 'train', phase, step) share one derivation; these pinned
    seeds are the first 63 bits of SHA-256('0/blocks.0.attn.q') and SHA-256('3/train/1/5'), so saved runs'
    masks and batches stay what they were."""
    assert keyed_generator(0, "blocks.0.attn.q").initial_seed() == 6906883365907251163
    assert keyed_generator(3, "train", 1, 5).initial_seed() == 3773872772362390116
