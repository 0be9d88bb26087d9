"""The evaluation sample: a fixed, seeded, stratified set of validation windows per domain; its size in tokens;
which targets are scored."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sparsecl.config import build_config
from sparsecl.data.domains import load_domains
from sparsecl.data.stream import domain_val_windows, eval_window_count, val_starts, val_windows
from sparsecl.data.tokenizer import DOC_SEP, encode_docs
from sparsecl.metrics.evaluate import evaluate_domains
from sparsecl.probes.context import spread_rows
from sparsecl.rng import keyed_generator
from sparsecl.sparse.build import build_model
from sparsecl.store.checkpoint import split_prefix
from sparsecl.train.runner import run_experiment


def test_windows_are_stratified_over_the_whole_stream() -> None:
    L, n, block = 100_000, 50, 32
    stream = np.arange(L, dtype=np.int64)  # token value = position, so x[:, 0] are the starts
    x, y = val_windows(stream, n, block, keyed_generator(3, "val", "legal"))
    starts = x[:, 0].numpy()
    stratum = (L - 1) // n
    assert x.shape == (n, block) and torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y, x + 1)
    for i, s in enumerate(starts):  # one window inside each of n equal strata
        assert i * stratum <= s and s + block <= (i + 1) * stratum
    assert starts[0] < stratum and starts[-1] >= (n - 1) * stratum  # covers the stream from start to end
    assert np.all(np.diff(starts) >= block)  # non-overlapping targets
    assert len(set((starts % stratum).tolist())) > n // 2  # offsets are drawn, not a fixed grid
    same = val_starts(L, n, block, keyed_generator(3, "val", "legal"))
    other = val_starts(L, n, block, keyed_generator(3, "val", "code"))
    assert np.array_equal(same, starts) and not np.array_equal(other, starts)


def test_domain_sample_depends_on_seed_and_name_only() -> None:
    streams = {"a": np.arange(5000, dtype=np.int64) % 251, "b": np.arange(7000, dtype=np.int64) % 241}
    both = domain_val_windows(streams, 7, 512, 32)
    alone = domain_val_windows({"b": streams["b"]}, 7, 512, 32)
    assert torch.equal(both["b"][0], alone["b"][0])  # other domains do not shift a domain's sample
    assert both["a"][0].shape == (16, 32)  # ceil(512 / 32) windows
    assert not torch.equal(domain_val_windows(streams, 8, 512, 32)["b"][0], both["b"][0])
    # another process (another hash seed) draws the same windows: what resumes and `sparsecl probe` rely on
    code = ("import numpy as np; from sparsecl.data.stream import domain_val_windows as w; "
            "s = np.arange(7000, dtype=np.int64) % 241; print(w({'b': s}, 7, 512, 32)['b'][0][:, 0].tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": "", **_pythonpath()}).stdout
    assert out.strip() == str(both["b"][0][:, 0].tolist())


def _pythonpath() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "OMP_WAIT_POLICY")}


def test_spread_rows_pick_one_window_per_group() -> None:
    assert spread_rows(128, 8) == [8, 24, 40, 56, 72, 88, 104, 120]
    assert spread_rows(5, 5) == [0, 1, 2, 3, 4]
    assert spread_rows(3, 7) == [0, 1, 2, 0, 1, 2, 0]  # more rows than windows: cycle (tiny streams only)


def test_eval_tokens_config_summary_and_same_windows_in_every_phase(tmp_path: Path, tiny) -> None:
    cfg = build_config(tiny(eval={"every": 0, "tokens": 320, "batch_size": 4},
                            **{"train.steps_per_phase": 4}))
    assert cfg.eval.tokens == 320 and cfg.eval.batches is None
    [s] = run_experiment([cfg], tmp_path, progress_bar=False)
    assert s.eval_tokens == {"arith": 320, "facts": 320, "cipher": 320}  # 10 windows of 32
    # every phase-end loss is reproduced by the phase checkpoint on the windows rebuilt from (seed, domain)
    doms = load_domains(cfg.data, cfg.model.block_size)
    val = domain_val_windows({n: d.val for n, d in doms.items()}, cfg.seed, 320, cfg.model.block_size)
    model, _, _ = build_model(cfg, torch.device("cpu"))
    for j in (1, 3):
        sd = split_prefix(load_file(str(tmp_path / "tiny" / "ckpt" / f"phase-{j:03d}.safetensors")), "model.")
        model.load_state_dict(sd, strict=False)
        res = evaluate_domains(model, val, 4, torch.device("cpu"))
        assert [res[d]["loss"] for d in cfg.domain_names] == pytest.approx(s.loss_matrix[j], abs=1e-6)


def test_eval_tokens_round_up_to_whole_windows_and_old_batches_key(tiny) -> None:
    assert build_config(tiny(eval={"tokens": 300})).eval.tokens == 300
    assert eval_window_count(300, 32) == 10 and eval_window_count(320, 32) == 10  # 300 tokens score 320
    old = build_config(tiny())  # eval: {batches: 2, batch_size: 4}, block 32: the older spelling
    assert old.eval.tokens == 2 * 4 * 32 and old.eval.batches is None
    assert build_config(tiny(eval={})).eval.tokens == 16384


def test_document_separator_targets_are_scored() -> None:
    """A model that always bets on the separator: the loss is exactly the mean over every target, separators
    included, and accuracy is the fraction of separator targets."""

    class BetsOnSeparator(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(*x.shape, 256)
            logits[..., DOC_SEP] = 5.0
            return logits

    stream = encode_docs(["abc", "de", "fghij", "k"] * 4).astype(np.int64)
    x, y = val_windows(stream, 100, 8, keyed_generator(0, "val", "d"))
    res = evaluate_domains(BetsOnSeparator(), {"d": (x, y)}, 2, torch.device("cpu"))["d"]
    n_sep, n = int((y == DOC_SEP).sum()), y.numel()
    assert n_sep > 0 and res["tokens"] == n
    z = math.exp(5.0) + 255
    expected = (n_sep * -math.log(math.exp(5.0) / z) + (n - n_sep) * -math.log(1 / z)) / n
    assert res["loss"] == pytest.approx(expected, rel=1e-6)
    assert res["acc"] == pytest.approx(n_sep / n)
