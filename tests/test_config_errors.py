"""Bad input: one line naming the field and the fix, exit code 2, and nothing written."""

from pathlib import Path

import pytest
import yaml

from sparsecl.cli import main


def run_cli(tmp_path: Path, capsys, cfg: dict, *extra: str) -> tuple[int, str]:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    code = main(["run", str(path), *extra, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert not out.exists(), "nothing may be written on bad input"
    return code, err


CASES = [
    ({"modle": {}}, [], "'modle': unknown key"),
    ({"model": {"n_layers": 2}}, [], "'model.n_layers': unknown key"),
    ({"model": {"n_layer": "two"}}, [], "'model.n_layer': expected an integer"),
    ({"train": {"lr": [1]}}, [], "'train.lr': expected a number"),
    ({}, ["sparse.density=0"], "'sparse.density': must be in (0, 1]"),
    ({}, ["sparse.density=1.5"], "'sparse.density': must be in (0, 1]"),
    ({}, ["sparse.topology=ring"], "'sparse.topology': unknown topology"),
    ({}, ["method.name=magic"], "'method.name': unknown method"),
    ({}, ["model.n_head=3"], "'model.n_head': 3 does not divide d_model=32"),
    ({}, ["schedule=arith,poetry"], "'schedule[1]': domain 'poetry' is not in data.domains"),
    ({}, ["train.min_lr=1.0"], "'train.min_lr'"),
    ({}, ["eval.every=-1"], "'eval.every'"),
    ({"eval": {"tokens": 0}}, [], "'eval.tokens': must be >= 1"),
    ({}, ["eval.tokens=4096"], "'eval.batches': is set together with eval.tokens; drop eval.batches"),
    ({"eval": {"batches": None, "token": 4096}}, [], "'eval.token': unknown key"),
]


@pytest.mark.parametrize("patch,overrides,message", CASES)
def test_bad_config_fields(tmp_path: Path, capsys, tiny, patch: dict, overrides: list, message: str) -> None:
    cfg = tiny()
    for k, v in patch.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    code, err = run_cli(tmp_path, capsys, cfg, *overrides)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert message in err


def test_missing_data_file(tmp_path: Path, capsys, tiny) -> None:
    cfg = tiny(**{"data.domains": [{"name": "mine", "source": "txt", "path": str(tmp_path / "nope.txt")}],
                  "schedule": "mine"})
    code, err = run_cli(tmp_path, capsys, cfg)
    assert code == 2 and "data.domains.mine.path" in err and "does not exist" in err


def test_empty_domain(tmp_path: Path, capsys, tiny) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    cfg = tiny(**{"data.domains": [{"name": "e", "source": "jsonl", "path": str(tmp_path / "empty.jsonl")}],
                  "schedule": "e"})
    code, err = run_cli(tmp_path, capsys, cfg)
    assert code == 2 and "'e' is empty" in err


def test_bad_yaml_and_missing_config(tmp_path: Path, capsys) -> None:
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    assert main(["run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["run", "--preset", "nosuch", "--out", str(tmp_path / "o")]) == 2
    assert "unknown preset 'nosuch'" in capsys.readouterr().err
    assert main(["run", "--preset", "quickstart", "sparse.density", "--out", str(tmp_path / "o")]) == 2
    assert "is not key=value" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_resume_of_nonexistent_folder(tmp_path: Path, capsys) -> None:
    assert main(["resume", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_quickstart_preset_resolves_to_dense_and_er10() -> None:
    from sparsecl.config import arm_configs, load_experiment

    cfgs = arm_configs(*load_experiment(None, [], "quickstart"))
    assert [(c.name, c.sparse.density, c.sparse.topology) for c in cfgs] == [("dense", 1.0, "er"), ("er10", 0.1, "er")]
    assert [c.method.name for c in cfgs] == ["naive", "naive"]
