"""`sparsecl run --help` lists every config key from the dataclasses, and help never loads torch."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import typing

import pytest

from sparsecl.cli import main
from sparsecl.config import RunConfig
from sparsecl.config.docs import config_keys


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    """Every key a config file can set, walked here independently of ``config_keys``."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        if dataclasses.is_dataclass(tp):
            out += _leaf_keys(tp, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        elif item is not None and dataclasses.is_dataclass(item):
            out += _leaf_keys(item, f"{prefix}{f.name}[].")
        else:
            out.append(prefix + f.name)
    return out


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_run_help_lists_every_config_key_with_its_doc(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "run")
    listed = set(re.findall(r"^  (\S+)", text, flags=re.M))
    keys = _leaf_keys(RunConfig)
    assert len(keys) > 90
    missing = [k for k in keys if k not in listed]
    assert not missing, f"config keys missing from `sparsecl run --help`: {missing}"
    for k in ("group", "data.split_salt", "train.beta1", "train.beta2", "data.domains[].max_bytes"):
        assert k in listed  # the keys the hand-written list had left out
    assert "AdamW beta2. [float = 0.95]" in text and "[cpu|cuda|auto = auto]" in text


def test_every_config_field_has_a_doc() -> None:
    undocumented = [k.key for k in config_keys() if not k.doc]
    assert not undocumented, f"write a docstring under these config fields: {undocumented}"
    assert [k.key for k in config_keys() if k.kind not in ("section", "list of sections")] == _leaf_keys(RunConfig)


def test_probe_help_lists_the_registered_probes(capsys: pytest.CaptureFixture[str]) -> None:
    from sparsecl.probes import PROBES

    text = _help(capsys, "probe")
    assert all(re.search(rf"^  {name} ", text, flags=re.M) for name in PROBES)


def test_parser_and_help_do_not_import_torch() -> None:
    code = """if True:
        import contextlib, io, json, sys
        from sparsecl.cli import build_parser, main
        build_parser()
        seen = {"parser": sorted(m for m in ("torch", "numpy") if m in sys.modules)}
        for argv in ([], ["run"], ["sweep"], ["topology"], ["domains"], ["resume"], ["report"]):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                main([*argv, "--help"])
            seen[" ".join(argv) or "sparsecl"] = sorted(m for m in ("torch", "numpy") if m in sys.modules)
        print(json.dumps(seen))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    seen = json.loads(out)
    assert seen == {k: [] for k in seen}, f"modules loaded while building the parser or printing help: {seen}"
