"""Tokenizers: BPE round trip and determinism, bits per byte over the same bytes, vocab rules, resume reuse."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sparsecl.cli import main
from sparsecl.config import build_config
from sparsecl.data.corpora import python_stdlib
from sparsecl.data.tokenizer import (
    BYTE,
    DOC_SEP,
    TOKENIZER_FILE,
    load_file,
    saved_tokenizer,
    token_dtype,
    train_bpe,
)
from sparsecl.metrics.evaluate import evaluate_domains
from sparsecl.train.runner import run_experiment
from sparsecl.train.validate import checked_config

pytest.importorskip("tokenizers")

DOCS = python_stdlib(200_000)
TEXTS = ["plain ascii", "naïve café — 漢字 and 🙂 emoji", "tabs\tand\nnewlines\r\n", "<|endoftext|> literal",
         "".join(map(chr, range(1, 128)))]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(iter(DOCS), 400)


def test_bpe_round_trips_any_text_and_counts_its_bytes(bpe) -> None:
    assert bpe.vocab_size == 400 and bpe.dtype == np.uint16
    for t in TEXTS:
        ids = bpe.encode(t)
        assert ids.min() >= 1 and ids.max() < 400  # id 0 is reserved for the separator
        assert bpe.decode(ids) == t
        assert int(bpe.token_bytes[ids].sum()) == len(t.encode("utf-8"))
    n_bytes = sum(len(d.encode()) + 1 for d in DOCS)
    assert len(bpe.encode_docs(DOCS)) < 0.7 * n_bytes  # 143 merges learned from this code compress it
    stream = bpe.encode_docs(TEXTS)
    assert (stream == DOC_SEP).sum() == len(TEXTS) and stream[-1] == DOC_SEP
    assert bpe.decode(stream) == "\x00".join(TEXTS) + "\x00"


def test_bpe_training_is_deterministic_across_processes(tmp_path: Path) -> None:
    code = ("import os; from sparsecl.data.tokenizer import train_bpe; "
            "print(train_bpe(iter(open(os.__file__).read().split('\\n\\n')), 600).fingerprint)")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}  # each process seeds Rust's hash maps differently
    assert len(outs) == 1
    import os

    assert outs.pop().strip() == train_bpe(iter(open(os.__file__).read().split("\n\n")), 600).fingerprint


def test_token_dtype_widths() -> None:
    assert [token_dtype(v) for v in (256, 257, 65536, 65537)] == [np.uint8, np.uint16, np.uint16, np.uint32]


class Uniform(torch.nn.Module):
    """Predicts every token with probability 1/V: the NLL of each target is exactly ln V."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*x.shape, self.vocab)


def _whole_stream(tok, docs: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """One window scoring every token after a leading separator: the targets cover all text plus separators."""
    s = torch.from_numpy(np.concatenate([[DOC_SEP], tok.encode_docs(docs)]).astype(np.int64))
    return s[None, :-1], s[None, 1:]


def test_bpb_of_byte_and_bpe_is_computed_over_the_same_bytes(bpe) -> None:
    docs = TEXTS + DOCS[:5]
    n_bytes = sum(len(d.encode("utf-8")) + 1 for d in docs)  # each document plus its separator
    res = {}
    for name, tok in (("byte", BYTE), ("bpe", bpe)):
        x, y = _whole_stream(tok, docs)
        res[name] = evaluate_domains(Uniform(tok.vocab_size), {"d": (x, y)}, 4, torch.device("cpu"),
                                     {"d": tok.target_bytes(y)})["d"]
        assert res[name]["bytes"] == n_bytes
    assert res["byte"]["bpb"] == pytest.approx(8.0, rel=1e-6)  # ln 256 / ln 2 per byte (float32 logits)
    n_bpe = res["bpe"]["tokens"]
    assert n_bpe < n_bytes
    assert res["bpe"]["bpb"] == pytest.approx(n_bpe * math.log(400) / (math.log(2) * n_bytes), rel=1e-6)


def test_byte_tokenizer_bpb_is_loss_over_ln2(tmp_path: Path, tiny) -> None:
    cfg = tiny(**{"schedule": "arith", "data.domains": ["arith"], "train.steps_per_phase": 6})
    [s] = run_experiment([build_config(cfg)], tmp_path, progress_bar=False)
    assert s.tokenizer["kind"] == "byte" and s.tokenizer["vocab_size"] == 256
    for lrow, brow in zip(s.loss_matrix, s.bpb_matrix, strict=True):
        assert brow == pytest.approx([v / math.log(2) for v in lrow], rel=1e-12)


def test_bpe_run_sizes_the_model_saves_the_tokenizer_and_reuses_it_on_resume(tmp_path: Path, tiny) -> None:
    cfg = tiny(**{"data.tokenizer": {"kind": "bpe", "vocab_size": 300}, "schedule": "arith,facts",
                  "data.domains": ["arith", "facts"], "train.steps_per_phase": 6, "eval.every": 0})
    assert build_config(cfg).model.vocab_size == 300
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env_kill = {"SPARSECL_KILL_AT_STEP": "8"}
    import os

    env = {**os.environ, **env_kill}
    killed = subprocess.run([sys.executable, "-m", "sparsecl", "run", str(path), "--out", str(tmp_path / "o"),
                             "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == 137, killed.stderr
    rd = tmp_path / "o" / "tiny"
    saved = load_file(rd / TOKENIZER_FILE)
    assert saved.vocab_size == 300
    # Swap in another valid BPE of the same size: a resume must use the run folder's file, not retrain.
    other = train_bpe(iter(["zzz qqq " * 50, "xyzzy plugh " * 40]), 300)
    (rd / TOKENIZER_FILE).write_text(other.to_json())
    assert main(["resume", str(tmp_path / "o"), "--no-progress"]) == 0
    summary = json.loads((rd / "summary.json").read_text())
    assert saved_tokenizer(rd, build_config(cfg).data.tokenizer).fingerprint == other.fingerprint  # probes too
    assert summary["tokenizer"]["kind"] == "bpe"
    assert summary["tokenizer"]["fingerprint"] == other.fingerprint[:16] != saved.fingerprint[:16]
    fresh = run_experiment([build_config(cfg)], tmp_path / "fresh", progress_bar=False)[0]
    assert fresh.tokenizer["fingerprint"] == saved.fingerprint[:16]  # same data, same BPE
    L, B = np.array(fresh.loss_matrix), np.array(fresh.bpb_matrix)
    assert (B < L / math.log(2)).all()  # a BPE token covers more than one byte on average


def _run_cli(tmp_path: Path, capsys, cfg: dict) -> tuple[int, str]:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    code = main(["run", str(path), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert not out.exists(), "nothing may be written on bad input"
    assert len(err.splitlines()) == 1, err
    return code, err


def _word_level(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    t = Tokenizer(models.WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.save(str(path))


@pytest.mark.parametrize("case,message", [
    ("garbage", "does not load"),
    ("missing", "does not exist"),
    ("wordlevel", "has no byte fallback"),
    ("small_bpe", "'data.tokenizer.vocab_size': 100 is too small for the byte fallback"),
    ("small_model", "'model.vocab_size': 256 is smaller than the tokenizer's vocabulary (512)"),
    ("small_model_file", "'model.vocab_size': 256 is smaller than the tokenizer's vocabulary (400)"),
])
def test_tokenizer_errors_are_one_line_exit_2(tmp_path: Path, capsys, tiny, bpe, case: str, message: str) -> None:
    f = tmp_path / "tok.json"
    tok = {"kind": "file", "path": str(f)}
    if case == "garbage":
        f.write_text('{"version": "1.0", "model": 42}')
    elif case == "wordlevel":
        _word_level(f)
    elif case == "small_bpe":
        tok = {"kind": "bpe", "vocab_size": 100}
    elif case == "small_model":
        tok = {"kind": "bpe", "vocab_size": 512}
    elif case == "small_model_file":
        f.write_text(bpe.to_json())
    cfg = tiny(**{"data.tokenizer": tok})
    if case.startswith("small_model"):
        cfg["model"]["vocab_size"] = 256
    code, err = _run_cli(tmp_path, capsys, cfg)
    assert code == 2 and message in err
    if case in ("garbage", "missing", "wordlevel"):
        assert "'data.tokenizer.path'" in err


def test_a_supplied_byte_level_tokenizer_is_used_and_copied_into_the_run(tmp_path: Path, tiny, bpe) -> None:
    f = tmp_path / "mine.json"
    f.write_text(bpe.to_json())
    cfg = checked_config(tiny(**{"data.tokenizer": {"kind": "file", "path": str(f)}, "schedule": "arith",
                                 "data.domains": ["arith"], "train.steps_per_phase": 4}))
    assert cfg.model.vocab_size == 400
    [s] = run_experiment([cfg], tmp_path / "o", progress_bar=False)
    assert s.tokenizer["kind"] == "file" and s.tokenizer["fingerprint"] == bpe.fingerprint[:16]
    rd = tmp_path / "o" / "tiny"
    assert load_file(rd / TOKENIZER_FILE).fingerprint == bpe.fingerprint
    f.unlink()  # the run folder's copy is enough from now on
    stored = build_config(yaml.safe_load((rd / "config.yaml").read_text()))
    assert saved_tokenizer(rd, stored.data.tokenizer).fingerprint == bpe.fingerprint


def test_bpe_train_bytes_caps_each_domains_training_text(tmp_path: Path) -> None:
    from sparsecl.config import DataConfig, DomainSpec, TokenizerConfig
    from sparsecl.data.cache import _training_texts

    data = DataConfig(domains=[DomainSpec(name="arith", max_bytes=60_000), DomainSpec(name="facts", max_bytes=60_000)],
                      tokenizer=TokenizerConfig(kind="bpe", vocab_size=300, train_bytes=20_000))
    per_domain = {"arith": 0, "facts": 0}
    texts = list(_training_texts(data))
    for t in texts:
        per_domain["arith" if t.startswith("Q:") else "facts"] += len(t.encode())
    longest = max(len(t.encode()) for t in texts)
    assert all(10_000 <= n < 10_000 + longest for n in per_domain.values())  # stops once 10 kB is reached


def _summary(name: str, tokenizer: dict | None, loss: float, bpb: float) -> dict:
    s = {"name": name, "method": "naive", "topology": "dense", "density": 1.0, "params_total": 10,
         "params_nonzero": 10, "avg_forgetting": 0.1, "bwt": -0.1, "fwt": 0.0, "final_avg_loss": loss,
         "final_avg_bpb": bpb, "domains": ["a"], "phases": [{"domains": ["a"], "steps": 1}],
         "loss_matrix": [[loss + 1], [loss]], "bpb_matrix": [[bpb + 1], [bpb]]}
    return {**s, "tokenizer": tokenizer} if tokenizer else s


def test_tables_compare_in_bpb_only_when_tokenizers_differ() -> None:
    from sparsecl.metrics.table import comparison_table, report_text

    byte_old = _summary("old", None, 1.5, 2.164)  # a summary from before tokenizers were recorded: bytes
    byte_new = _summary("byte", BYTE.info(), 1.4, 2.02)
    assert "bpb" not in comparison_table([byte_old, byte_new]) and "bits per byte" not in report_text([byte_new])
    bpe_s = _summary("bpe", {"kind": "bpe", "vocab_size": 4096, "fingerprint": "0123456789abcdef"}, 3.1, 1.234)
    table = comparison_table([byte_new, bpe_s])
    header, _, row_byte, row_bpe = table.splitlines()
    assert header.split()[-4:] == ["tokenizer", "final", "avg", "bpb"]
    assert row_byte.split()[-2:] == ["byte", "2.020"] and row_bpe.split()[-2:] == ["bpe:4096:01234567", "1.234"]
    text = report_text([byte_new, bpe_s])
    assert "== bpe (bpe:4096:01234567): validation bits per byte" in text and "nats/token" not in text
    assert "2 (a)" not in text and "1 (a)        1.234" in text


def test_a_trained_bpe_is_cached_and_reads_back_identical(tmp_path: Path) -> None:
    from sparsecl.config import DataConfig, DomainSpec, TokenizerConfig
    from sparsecl.data.cache import run_tokenizer

    data = DataConfig(domains=[DomainSpec(name="arith", max_bytes=20_000)], cache_dir=str(tmp_path),
                      tokenizer=TokenizerConfig(kind="bpe", vocab_size=5000))
    trained = run_tokenizer(data)
    [cached_file] = (tmp_path / "tokenizers").iterdir()
    again = run_tokenizer(data)
    assert again.info() == trained.info() and trained.info()["vocab_size"] == 5000  # padded: merges ran out
    assert trained.hf.get_vocab_size() < 4999
    cached_file.write_text("{")  # a damaged cache file is retrained, not used
    assert run_tokenizer(data).fingerprint == trained.fingerprint
