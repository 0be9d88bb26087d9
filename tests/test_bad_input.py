"""Bad input through the CLI (issue 12): exit code 2, one stderr line naming the field, nothing written.

Every case runs ``sparsecl.cli.main`` in this process (validation fails before any training), from a working
folder two levels below the checked root, so that a name such as ``../../x`` would land inside the root and
the before/after snapshot would see it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config

from sparsecl.cli import main

HAS_CUDA = torch.cuda.is_available()


def _has(mod: str) -> bool:
    return importlib.util.find_spec(mod) is not None


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


TINY_SWEEP = {**tiny_config(), "grid": {"sparse.density": [0.5, 1.0]}}

# (id, files written before the command: name -> text or bytes, argv with {out}, field named in the error)
R = ["run", "c.yaml"]
CASES: list[tuple[str, dict, list[str], str]] = [
    # 1. names cannot escape --out
    ("name-slash", {}, [*R, "name=a/b"], "'name'"),
    ("name-dotdot", {}, [*R, "name=../x"], "'name'"),
    ("name-absolute", {}, [*R, "name=/tmp/sparsecl-abs"], "'name'"),
    ("name-only-dots", {}, [*R, "name=.."], "'name'"),
    ("name-hidden", {}, [*R, "name=.hidden"], "'name'"),
    ("name-empty", {}, [*R, "name="], "'name'"),
    ("name-list", {}, [*R, "name=[a]"], "'name'"),
    ("arm-traversal", {}, [*R, "arms=[{name: ../../trav}]"], "'arms[0].name'"),
    ("arm-absolute", {}, [*R, "arms=[{name: /tmp/sparsecl-abs}]"], "'arms[0].name'"),
    ("arm-slash", {}, [*R, "arms=[{name: ok}, {name: a/b}]"], "'arms[1].name'"),
    ("arm-empty", {}, [*R, "arms=[{name: ''}]"], "'arms[0].name'"),
    ("arm-in-file", {"a.yaml": {**tiny_config(), "arms": [{"name": "../../trav"}]}}, ["run", "a.yaml"],
     "'arms[0].name'"),
    # 2. every check before the first write
    ("vocab-too-small", {}, [*R, "model.vocab_size=100"], "'model.vocab_size'"),
    ("out-is-file", {"f": "x"}, [*R, "--out-file", "f"], "--out"),
    ("out-under-file", {"f": "x"}, [*R, "--out-file", "f/sub"], "--out"),
    ("non-utf8-jsonl", {"bad.jsonl": b'{"text": "caf\xe9"}\n'},
     [*R, "data.domains=[{name: b, source: jsonl, path: bad.jsonl}]", "schedule=b"], "'data.domains.b.path'"),
    ("missing-txt", {}, [*R, "data.domains=[{name: m, source: txt, path: nope.txt}]", "schedule=m"],
     "'data.domains.m.path'"),
    ("missing-dir", {}, [*R, "data.domains=[{name: m, source: dir, path: nodir}]", "schedule=m"],
     "'data.domains.m.path'"),
    ("empty-jsonl", {"e.jsonl": ""}, [*R, "data.domains=[{name: e, source: jsonl, path: e.jsonl}]", "schedule=e"],
     "'data.domains.e'"),
    ("bad-json-line", {"j.jsonl": '{"text": "a"}\n{oops\n'},
     [*R, "data.domains=[{name: j, source: jsonl, path: j.jsonl}]", "schedule=j"], "j.jsonl:2"),
    ("jsonl-no-field", {"j.jsonl": '{"body": "a"}\n'},
     [*R, "data.domains=[{name: j, source: jsonl, path: j.jsonl}]", "schedule=j"], "text_field"),
    ("no-path", {}, [*R, "data.domains=[{name: m, source: txt}]", "schedule=m"], "'data.domains.m.path'"),
    ("unknown-builtin", {}, [*R, "data.domains=[poetry]", "schedule=poetry"], "'data.domains.poetry'"),
    # 3. numbers: NaN and infinities name the right field
    ("lr-nan", {}, [*R, "train.lr=.nan"], "'train.lr'"),
    ("lr-inf", {}, [*R, "train.lr=.inf"], "'train.lr'"),
    ("lr-neg-inf", {}, [*R, "train.lr=-.inf"], "'train.lr'"),
    ("weight-decay-nan", {}, [*R, "train.weight_decay=.nan"], "'train.weight_decay'"),
    ("min-lr-nan", {}, [*R, "train.min_lr=.nan"], "'train.min_lr'"),
    ("grad-clip-inf", {}, [*R, "train.grad_clip=.inf"], "'train.grad_clip'"),
    ("density-nan", {}, [*R, "sparse.density=.nan"], "'sparse.density'"),
    ("dropout-nan", {}, [*R, "model.dropout=.nan"], "'model.dropout'"),
    ("taus-nan", {}, [*R, "probe.dormant_taus=[0.0, .nan]"], "'probe.dormant_taus[1]'"),
    ("method-param-nan", {}, [*R, "method.name=ewc", "method.params.lam=.nan"], "'method.params.lam'"),
    ("lr-nan-in-file", {"n.yaml": "train: {lr: .nan}\nschedule: arith\n"}, ["run", "n.yaml"], "'train.lr'"),
    ("lr-text", {}, [*R, "train.lr=fast"], "'train.lr'"),
    # 8. small input cases
    ("dup-key", {"d.yaml": "schedule: arith\nseed: 1\nseed: 2\n"}, ["run", "d.yaml"], "duplicate key 'seed'"),
    ("dup-nested-key", {"d.yaml": "schedule: arith\ntrain:\n  lr: 0.1\n  lr: 0.2\n"}, ["run", "d.yaml"],
     "duplicate key 'lr'"),
    ("non-utf8-config", {"u.yaml": b"schedule: caf\xe9\n"}, ["run", "u.yaml"], "not UTF-8"),
    ("bad-yaml", {"b.yaml": "model: [unclosed\n"}, ["run", "b.yaml"], "not valid YAML"),
    ("missing-config", {}, ["run", "missing.yaml"], "does not exist"),
    # field checks that existed before, through the same path
    ("unknown-key", {}, [*R, "modle.n_layer=2"], "'modle'"),
    ("int-type", {}, [*R, "model.n_layer=two"], "'model.n_layer'"),
    ("density-zero", {}, [*R, "sparse.density=0"], "'sparse.density'"),
    ("topology", {}, [*R, "sparse.topology=ring"], "'sparse.topology'"),
    ("method", {}, [*R, "method.name=magic"], "'method.name'"),
    ("schedule-domain", {}, [*R, "schedule=arith,poetry"], "'schedule[1]'"),
    ("seeds-empty", {}, [*R, "seeds=[]"], "'seeds'"),
    ("seeds-text", {}, [*R, "seeds=[a]"], "'seeds'"),
    ("arms-empty", {}, [*R, "arms=[]"], "'arms'"),
    ("arms-unknown-key", {}, [*R, "arms=[{name: x, nom: y}]"], "'arms[0].nom'"),
    ("arms-duplicate", {}, [*R, "arms=[{name: x}, {name: x}]"], "'arms'"),
    ("threads-zero", {}, [*R, "threads=0"], "'threads'"),
    ("n-head", {}, [*R, "model.n_head=3"], "'model.n_head'"),
    ("val-fraction", {}, [*R, "data.val_fraction=1.5"], "'data.val_fraction'"),
    ("checkpoint-every", {}, [*R, "checkpoint_every=-1"], "'checkpoint_every'"),
    ("probes-unknown", {}, [*R, "probes=[nosuch]"], "probes"),
    ("not-key-value", {}, [*R, "sparse.density"], "sparse.density"),
    ("unknown-preset", {}, ["run", "--preset", "nosuch"], "unknown preset 'nosuch'"),
    ("grid-in-run", {"g.yaml": TINY_SWEEP}, ["run", "g.yaml"], "sparsecl sweep"),
    # sweeps
    ("sweep-arm-traversal", {"s.yaml": {**TINY_SWEEP, "arms": [{"name": "../../trav"}]}}, ["sweep", "s.yaml"],
     "'arms[0].name'"),
    ("sweep-arm-absolute", {"s.yaml": {**TINY_SWEEP, "arms": [{"name": "/tmp/sparsecl-abs"}]}},
     ["sweep", "s.yaml"], "'arms[0].name'"),
    ("sweep-empty-grid", {"s.yaml": {**TINY_SWEEP, "grid": {}}}, ["sweep", "s.yaml"], "'grid'"),
    ("sweep-null-grid", {"s.yaml": {**TINY_SWEEP, "grid": None}}, ["sweep", "s.yaml"], "'grid'"),
    ("sweep-grid-scalar", {"s.yaml": {**TINY_SWEEP, "grid": {"seed": 3}}}, ["sweep", "s.yaml"], "'grid.seed'"),
    ("sweep-grid-name", {"s.yaml": {**TINY_SWEEP, "grid": {"name": ["a", "b"]}}}, ["sweep", "s.yaml"],
     "'grid.name'"),
    ("sweep-grid-nan", {"s.yaml": {**TINY_SWEEP, "grid": {"train.lr": [1e-3, float("nan")]}}},
     ["sweep", "s.yaml"], "'train.lr'"),
    ("sweep-vocab", {"s.yaml": TINY_SWEEP}, ["sweep", "s.yaml", "model.vocab_size=10"], "'model.vocab_size'"),
    ("sweep-out-is-file", {"s.yaml": TINY_SWEEP, "f": "x"}, ["sweep", "s.yaml", "--out-file", "f"], "--out"),
    ("sweep-dup-key", {"s.yaml": "schedule: arith\ngrid: {seed: [0]}\ngrid: {seed: [1]}\n"}, ["sweep", "s.yaml"],
     "duplicate key 'grid'"),
    # 7. training stages (issue 10)
    ("rl-on-lm-domain", {}, [*R, "schedule=[{domain: arith, objective: rl}]"], "'schedule[0].objective'"),
    ("sft-on-lm-domain", {}, [*R, "schedule=[{domain: facts, objective: sft}]"], "'schedule[0].objective'"),
    ("sft-file-without-response", {"p.jsonl": '{"prompt": "q", "answer": "a"}\n'},
     [*R, "data.domains=[{name: t, source: jsonl, path: p.jsonl, prompt_field: prompt, response_field: response}]",
      "schedule=[{domain: t, objective: sft}]"], "'data.domains.t.response_field'"),
    ("response-field-alone", {}, [*R, "data.domains=[{name: t, source: jsonl, path: p.jsonl, response_field: r}]",
                                  "schedule=t"], "'data.domains.t.prompt_field'"),
    ("rl-group-size-1", {}, [*R, "rl.group_size=1"], "'rl.group_size'"),
    ("rl-updates-per-batch-0", {}, [*R, "rl.updates_per_batch=0"], "'rl.updates_per_batch'"),
    ("phase-lr-0", {}, [*R, "schedule=[{domain: arith, lr: 0}]"], "'schedule.lr'"),
    ("rl-with-replay", {}, [*R, "data.domains=[arith, facts_qa]", "method.name=replay",
                            "schedule=[{domain: arith}, {domain: facts_qa, objective: rl}]"],
     "'schedule[1].objective'"),
]
if not HAS_CUDA:
    CASES += [("device-cuda", {}, [*R, "device=cuda"], "'device'"),
              ("sweep-device-cuda", {"s.yaml": TINY_SWEEP}, ["sweep", "s.yaml", "device=cuda"], "'device'")]
for _mod, _flag in (("wandb", "log.wandb"), ("mlflow", "log.mlflow"), ("tensorboard", "log.tensorboard")):
    if not _has(_mod):
        CASES += [(f"{_flag}-missing", {}, [*R, f"{_flag}=true"], f"'{_flag}'"),
                  (f"sweep-{_flag}-missing", {"s.yaml": TINY_SWEEP}, ["sweep", "s.yaml", f"{_flag}=true"],
                   f"'{_flag}'")]
if _has("tensorboard"):
    CASES += [("log-dir-outside", {}, [*R, "log.tensorboard=true", "log.dir=/tmp/sparsecl-elsewhere"], "'log.dir'")]


def test_the_suite_is_large_enough() -> None:
    assert len(CASES) >= 50


@pytest.mark.parametrize("files,argv,field", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                   files: dict, argv: list[str], field: str) -> None:
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    (work / "c.yaml").write_text(yaml.safe_dump(tiny_config()))
    for name, content in files.items():
        if isinstance(content, dict):
            content = yaml.safe_dump(content)
        (work / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    argv = list(argv)
    if "--out-file" in argv:
        i = argv.index("--out-file")
        out = work / argv[i + 1]
        argv[i:i + 2] = []
    else:
        out = work / "out"
    before = _snapshot(tmp_path)
    code = main([*argv, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("sparsecl: error: ") and field in err, err
    assert _snapshot(tmp_path) == before, "nothing may be written on bad input"
    assert not Path("/tmp/sparsecl-abs").exists()


@pytest.mark.parametrize("argv,field", [
    (["resume", "nothing"], "does not exist"),
    (["resume", "."], "neither a run folder"),
    (["probe", "nothing"], "does not exist"),
])
def test_bad_folder_arguments(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                              argv: list[str], field: str) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err, err
    assert list(tmp_path.iterdir()) == []


def test_standard_float_notation_in_overrides_and_files(tmp_path: Path) -> None:
    from sparsecl.config import arm_configs, load_experiment

    path = tmp_path / "c.yaml"
    path.write_text("schedule: arith\ntrain: {lr: 1e-3, min_lr: 5E-5}\nsparse: {density: .5}\n")
    [cfg] = arm_configs(*load_experiment(str(path), []))
    assert (cfg.train.lr, cfg.train.min_lr, cfg.sparse.density) == (1e-3, 5e-5, 0.5)
    [cfg] = arm_configs(*load_experiment(str(path), ["train.lr=3e-4", "train.min_lr=1e-5", "seed=7"]))
    assert (cfg.train.lr, cfg.train.min_lr, cfg.seed) == (3e-4, 1e-5, 7)
    assert isinstance(cfg.seed, int)


def test_sweep_ids_are_sanitised_folder_names() -> None:
    from sparsecl.store.paths import check_name
    from sparsecl.sweep import expand

    runs = expand(tiny_config(), [], {"data.split_salt": ["../../x", "a/b"]})
    for r in runs:
        assert check_name(r.run_id, "run id") == r.run_id and "/" not in r.run_id and ".." not in r.run_id


def test_a_run_folder_linked_outside_out_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_config()))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "tiny").symlink_to(tmp_path / "elsewhere")
    before = _snapshot(tmp_path)
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lies outside the output folder" in err, err
    assert _snapshot(tmp_path) == before and list((tmp_path / "elsewhere").iterdir()) == []
