"""Cross-domain hygiene on constructed data: duplicates across domains, 13-gram overlap counted exactly,
overlap by design (facts) reported as such, and the warning `sparsecl run` (and `sparsecl sweep`, once) prints
before training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from sparsecl.cli import main
from sparsecl.config import DomainSpec
from sparsecl.data.domains import load_documents, split_documents
from sparsecl.data.hygiene import NGRAM, Overlap, check, fingerprint, ngram_hashes, report_text, warnings


def _words(prefix: str, n: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


def test_ngrams_stay_inside_documents() -> None:
    h, doc = ngram_hashes([_words("a", 15), _words("b", 12), _words("c", 13)])
    assert len(h) == 3 + 0 + 1 and list(doc) == [0, 0, 0, 2]  # 15-13+1, none in 12 words, one in 13
    h2, _ = ngram_hashes([_words("a", 15)])
    assert np.array_equal(h[:3], h2)
    assert len(set(h.tolist())) == 4


def test_overlap_counts_exactly_on_constructed_splits() -> None:
    shared = _words("s", 20)  # 8 distinct 13-grams
    fresh = _words("f", 20)  # 8 more
    a = fingerprint(train=[shared, _words("t", 30)], val=[shared + " " + fresh, _words("v", 20)])
    b = fingerprint(train=[_words("v", 20)], val=[_words("z", 40), "the same document"])
    c = fingerprint(train=["the same document", _words("q", 13)], val=[_words("y", 13)])
    rep = check({"a": a, "b": b, "c": c})
    # a's validation: doc 0 has 28 13-grams (8 all-s, 12 mixed, 8 all-f), doc 1 has 8 all-v: 36 distinct
    assert rep.overlap[("a", "a")] == Overlap(8 / 36, 1 / 2)
    assert rep.overlap[("a", "b")] == Overlap(8 / 36, 1 / 2)  # a's 'v' document is b's training document
    assert rep.overlap[("b", "a")] == Overlap(0.0, 0.0)
    assert rep.duplicates == {("a", "b"): 1, ("b", "c"): 1}
    assert rep.lines["a"] == 0.0 and rep.lines["c"] == 0.0
    w = warnings(rep)
    assert "1 document(s) occur in both 'a' and 'b'" in w and "1 document(s) occur in both 'b' and 'c'" in w
    assert f"22.2% of the validation {NGRAM}-grams of 'a' (50% of its documents) occur in its own training split" in w
    assert len(w) == 4
    text = report_text(check({"a": a, "b": b}, {"a": "it is meant to"}))
    assert "by design: 'a': it is meant to." in text
    assert "its own training split" not in text and "the training split of 'b'" in text


def test_facts_validation_lines_all_occur_in_training_and_the_check_says_so() -> None:
    docs = load_documents(DomainSpec(name="facts"))  # the default 1 MB (true from ~400 KB on)
    tr, va = split_documents(docs, "sparsecl", 0.1)
    train_lines = {line for d in tr for line in d.splitlines()}
    assert va and all(line in train_lines for d in va for line in d.splitlines())
    rep = check({"facts": fingerprint(tr, va), "arith": fingerprint(*split_documents(
        load_documents(DomainSpec(name="arith", max_bytes=40_000)), "sparsecl", 0.1))},
        {"facts": "recall"})
    assert rep.lines["facts"] == 1.0 and rep.lines["arith"] < 0.2


def test_check_cli_and_run_warning(tmp_path: Path, tiny, capsys: pytest.CaptureFixture) -> None:
    para = [" ".join(f"w{i}x{j}" for j in range(30)) for i in range(40)]
    (tmp_path / "a.txt").write_text("\n\n".join(para) + "\n")
    (tmp_path / "b.txt").write_text("\n\n".join(para[:20]) + "\n\n" + "\n\n".join(p.upper() for p in para[20:]))
    domains = [{"name": "a", "source": "txt", "path": "a.txt"}, {"name": "b", "source": "txt", "path": "b.txt"},
               {"name": "facts", "max_bytes": 20_000}]
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({**tiny(), "schedule": "a,b", "probes": [], "data": {"domains": domains},
                                   "model": {"n_layer": 1, "n_head": 1, "d_model": 16, "block_size": 16},
                                   "train": {"steps_per_phase": 2, "batch_size": 2, "warmup_steps": 0}}))
    assert main(["domains", "--check", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "  a & b: 20" in out  # the 20 paragraphs b copies from a
    assert "by design: 'facts': every validation line also occurs in its training split" in out
    assert "warning: 20 document(s) occur in both 'a' and 'b'" in out
    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "sparsecl: warning: data hygiene: 20 document(s) occur in both 'a' and 'b'" in err
    assert "'facts'" not in err
    assert main(["domains", "--check"]) == 2


def test_sweep_prints_the_run_warning_once(tmp_path: Path, tiny, capfd: pytest.CaptureFixture) -> None:
    para = [" ".join(f"w{i}x{j}" for j in range(30)) for i in range(40)]
    (tmp_path / "a.txt").write_text("\n\n".join(para) + "\n")
    (tmp_path / "b.txt").write_text("\n\n".join(para[:20]) + "\n\n" + "\n\n".join(p.upper() for p in para[20:]))
    domains = [{"name": "a", "source": "txt", "path": "a.txt"}, {"name": "b", "source": "txt", "path": "b.txt"}]
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({**tiny(), "schedule": "a,b", "probes": [], "data": {"domains": domains},
                                     "model": {"n_layer": 1, "n_head": 1, "d_model": 16, "block_size": 16},
                                     "train": {"steps_per_phase": 2, "batch_size": 2, "warmup_steps": 0},
                                     "grid": {"seed": [0, 1]}}))
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--parallel", "1", "--no-progress"]) == 0
    err = capfd.readouterr().err  # the workers' stderr too: they must not repeat it
    line = "sparsecl: warning: data hygiene: 20 document(s) occur in both 'a' and 'b'"
    assert err.count(line) == 1
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--parallel", "1", "--no-progress"]) == 0
    assert line not in capfd.readouterr().err  # nothing left to train: nothing read, nothing said
