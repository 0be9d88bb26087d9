"""Local sources a newcomer can trust: txt document separators, binary files refused, relative paths resolved
against the config file's folder, `sparsecl domains CONFIG`, and the hf source on local files only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from sparsecl.cli import main
from sparsecl.config import ConfigError, DomainSpec, Separator, arm_configs, build_config, load_experiment
from sparsecl.data.domains import load_documents
from sparsecl.errors import UserError
from sparsecl.train.runner import run_experiment

CODE = ("# file: a.py\nimport os\n\n\ndef f():\n    return 1\n"
        "# file: b.py\n\nx = 2\n\ny = 3\n"
        "# file: c.py\nprint('c')\n")


def test_txt_separator_prefix_and_regex_keep_whole_files(tmp_path: Path) -> None:
    p = tmp_path / "code.txt"
    p.write_text("preamble line\n" + CODE)
    blank = load_documents(DomainSpec(name="c", source="txt", path=str(p)))
    assert blank == ["preamble line\n# file: a.py\nimport os", "def f():\n    return 1\n# file: b.py", "x = 2",
                     "y = 3\n# file: c.py\nprint('c')"]  # blank lines cut files into fragments that straddle files
    by_prefix = load_documents(DomainSpec(name="c", source="txt", path=str(p), separator=Separator(prefix="# file:")))
    assert by_prefix == ["preamble line", "# file: a.py\nimport os\n\n\ndef f():\n    return 1",
                         "# file: b.py\n\nx = 2\n\ny = 3", "# file: c.py\nprint('c')"]
    by_regex = load_documents(DomainSpec(name="c", source="txt", path=str(p),
                                         separator=Separator(regex=r"# file: \w+\.py$")))
    assert by_regex == by_prefix
    with pytest.raises(ConfigError, match=r"data.domains.c.separator.regex"):
        DomainSpec(name="c", source="txt", path="x", separator=Separator(regex="("))
    with pytest.raises(ConfigError, match=r"'data.domains.c.separator': only applies to source txt"):
        DomainSpec(name="c", source="dir", path="x", separator=Separator(prefix="#"))
    with pytest.raises(ConfigError, match=r"'data.domains.c.split': only applies to source hf"):
        DomainSpec(name="c", source="jsonl", path="x", split="test")


def test_binary_file_is_refused_naming_the_field(tmp_path: Path) -> None:
    p = tmp_path / "blob.txt"
    p.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(UserError, match=r"'data.domains.b.path': .* looks binary"):
        load_documents(DomainSpec(name="b", source="txt", path=str(p)))
    with pytest.raises(UserError, match=r"'data.domains.b.path': .* looks binary"):
        load_documents(DomainSpec(name="b", source="jsonl", path=str(p)))


def _write_config(folder: Path, domains: list) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"schedule": "notes", "data": {"domains": domains}}))
    return cfg


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_dir = tmp_path / "cfg"
    (cfg_dir / "data").mkdir(parents=True)
    (cfg_dir / "data" / "notes.txt").write_text("one\n\ntwo\n")
    cfg = _write_config(cfg_dir, [{"name": "notes", "source": "txt", "path": "data/notes.txt"}])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    data, arms = load_experiment(str(cfg), [])
    [c] = arm_configs(data, arms)
    assert c.data.domains[0].path == str(cfg_dir / "data" / "notes.txt")
    assert load_documents(c.data.domains[0]) == ["one", "two"]
    # on the command line, against the current directory; the error names the folder it tried
    data, arms = load_experiment(str(cfg), ["data.domains=[{name: notes, source: txt, path: data/notes.txt}]"])
    [c] = arm_configs(data, arms)
    assert c.data.domains[0].path == str(elsewhere / "data" / "notes.txt")
    with pytest.raises(UserError, match=f"file '{elsewhere}/data/notes.txt' does not exist"):
        load_documents(c.data.domains[0])


def test_domains_config_shows_splits_and_the_summary_records_them(tmp_path: Path, tiny,
                                                                   capsys: pytest.CaptureFixture) -> None:
    docs = [f"# file: f{i}.py\n" + "\n\n".join(f"line {i}.{j} " * 8 for j in range(6)) for i in range(60)]
    (tmp_path / "code.txt").write_text("\n".join(docs) + "\n")
    domains = [{"name": "arith", "max_bytes": 30_000},
               {"name": "files", "source": "txt", "path": "code.txt", "separator": {"prefix": "# file:"}}]
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({**tiny(), "schedule": "arith,files", "probes": [], "data": {"domains": domains}}))
    assert main(["domains", str(cfg), "data.val_fraction=0.2"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("files "))
    sizes = [len(d.encode()) for d in docs]
    n_val = int(row.split()[2])
    assert int(row.split()[1]) + n_val == 60 and 5 <= n_val <= 20  # whole files, ~20% of them
    assert int(row.split()[3].replace(",", "")) + int(row.split()[4].replace(",", "")) == sum(sizes)
    assert row.split()[5:9] == [f"{int(row.split()[3].replace(',', '')) + int(row.split()[1]):,}",
                                f"{int(row.split()[4].replace(',', '')) + n_val:,}", f"{min(sizes):,}",
                                f"{max(sizes):,}"]  # byte tokens = bytes + one separator per document
    assert row.endswith("line prefix '# file:'")
    data, arms = load_experiment(str(cfg), [])
    [s] = run_experiment(arm_configs(data, arms), tmp_path / "out", progress_bar=False)
    info = s.data["files"]
    assert info["documents"]["train"] + info["documents"]["validation"] == 60
    assert info["separator"] == "line prefix '# file:'"
    assert info["shortest_document_bytes"] == min(sizes) and info["longest_document_bytes"] == max(sizes)
    assert info["tokens"]["train"] == info["bytes"]["train"] + info["documents"]["train"]
    src = s.data_sources
    assert src["files"]["source"] == f"local txt {tmp_path / 'code.txt'}" and len(src["files"]["content_sha256"]) == 16
    assert src["arith"]["package"] == "sparsecl"
    assert json.loads((tmp_path / "out" / "tiny" / "summary.json").read_text())["data"] == s.data


# ---------------------------------------------------------------- hf: local files through the library's builders

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before the import, which reads it: tests never reach the hub
datasets = pytest.importorskip("datasets")
ROWS = [{"text": f"row {i} says hello", "n": i} for i in range(5)]


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def _hf(path: Path | str, **kw: object) -> DomainSpec:
    return DomainSpec(name="h", source="hf", path=str(path), **kw)


def test_hf_reads_parquet_json_csv_and_saved_folders(tmp_path: Path, hf_cache: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    want = [r["text"] for r in ROWS]
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "d.csv").write_text("text,n\n" + "".join(f"{r['text']},{r['n']}\n" for r in ROWS))
    for name in ("d.parquet", "d.jsonl", "d.csv"):
        assert load_documents(_hf(tmp_path / name)) == want, name
    assert load_documents(_hf(tmp_path / "d.parquet", streaming=True, max_bytes=30)) == want[:2]
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                               "test": datasets.Dataset.from_dict({"body": [["A: hi", "B: hello"], None]})})
    ds.save_to_disk(str(tmp_path / "saved"))
    assert load_documents(_hf(tmp_path / "saved")) == want
    assert load_documents(_hf(tmp_path / "saved", split="test", text_field="body")) == ["A: hi\nB: hello"]
    with pytest.raises(UserError, match=r"'data.domains.h.split': 'dev' is not a split .* \['test', 'train'\]"):
        load_documents(_hf(tmp_path / "saved", split="dev"))


def test_hf_bad_input_names_the_field(tmp_path: Path, hf_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    with pytest.raises(UserError, match=r"'data.domains.h.text_field': the dataset has no column 'body'; its "
                                        r"columns are \['text', 'n'\]"):
        load_documents(_hf(tmp_path / "d.jsonl", text_field="body"))
    with pytest.raises(UserError, match=r"'data.domains.h.text_field': column 'n' holds int64, not text"):
        load_documents(_hf(tmp_path / "d.jsonl", text_field="n"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match=r"'data.domains.h.path': .* is empty"):
        load_documents(_hf(tmp_path / "empty.jsonl"))
    (tmp_path / "blob.parquet").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(UserError, match=r"'data.domains.h.path': could not read .* as parquet"):
        load_documents(_hf(tmp_path / "blob.parquet"))
    with pytest.raises(UserError, match=r"'data.domains.h.path': '.*/typo.parquet' does not exist"):
        load_documents(_hf("typo.parquet"))
    with pytest.raises(UserError, match=r"'data.domains.h.path': could not load hub dataset 'nobody/no-such-set'"
                                        r".*not in the local Hugging Face cache"):
        load_documents(_hf("nobody/no-such-set"))
    import builtins

    real_import = builtins.__import__

    def no_datasets(name: str, *a: object, **k: object) -> object:
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(UserError, match=r"'data.domains.h.source': source hf needs .* pip install 'sparsecl\[hf\]'"):
        load_documents(_hf(tmp_path / "d.jsonl"))


def test_hf_error_through_the_cli_is_one_line_and_writes_nothing(tmp_path: Path, tiny, hf_cache: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({**tiny(), "schedule": "h", "data": {"domains": [
        {"name": "h", "source": "hf", "path": "d.jsonl", "text_field": "missing"}]}}))
    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.domains.h.text_field" in err[0]
    assert not (tmp_path / "out").exists()
    assert build_config({**tiny(), "schedule": "h", "data": {"domains": [
        {"name": "h", "source": "hf", "path": "owner/set", "config_name": "en", "split": "validation"}]}})
