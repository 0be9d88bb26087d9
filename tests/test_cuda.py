"""The CUDA code paths: the same invariants and equalities as on the CPU. Skipped where no GPU is visible.

CI has no GPU; these run on a GPU machine with `pytest tests/test_cuda.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_csr import _pair, _train_losses, _trainer, assert_csr_matches_masked
from test_csr import tiny as csr_tiny
from test_run import _cli

from sparsecl.config import build_config
from sparsecl.metrics.summary import TIMING_KEYS
from sparsecl.model.gpt import GPT
from sparsecl.sparse.csr import CSRLinear
from sparsecl.train.runner import run_experiment

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _no_tf32() -> None:
    """Plain fp32 matmuls, so that csr (cuSPARSE, fp32) and masked (cuBLAS) compute the same thing."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_csr_forward_and_gradients_match_masked_on_cuda(dtype: torch.dtype) -> None:
    m, _ = _pair(dtype)
    m = m.cuda()
    assert_csr_matches_masked(m, CSRLinear.from_masked(m))


@pytest.mark.parametrize("backend", ["masked", "csr"])
def test_mask_invariant_after_100_adamw_steps_on_cuda(tmp_path: Path, backend: str) -> None:
    data = csr_tiny(density=0.2, backend=backend)
    data["device"] = "cuda"
    data["train"]["weight_decay"] = 0.1
    t = _trainer(tmp_path, data)
    assert next(t.model.parameters()).is_cuda
    losses = _train_losses(t, 100)
    assert losses[0] > losses[-1] + 0.5
    for mod in t.model.maskable().values():
        off = ~mod.mask
        assert torch.count_nonzero(mod.dense_weight()[off]) == 0
        if backend == "masked":
            st = t.optimizer.state[mod.weight]
            assert torch.count_nonzero(st["exp_avg"][off]) == 0
            assert torch.count_nonzero(st["exp_avg_sq"][off]) == 0
            assert torch.count_nonzero(st["exp_avg"][mod.mask]) > 0
        else:
            assert isinstance(mod, CSRLinear) and mod.values.numel() == int(mod.mask.sum())


def test_csr_and_masked_follow_one_loss_curve_on_cuda(tmp_path: Path) -> None:
    runs = {}
    for backend in ("masked", "csr"):
        data = csr_tiny(density=0.1, backend=backend)
        data["device"] = "cuda"
        runs[backend] = _train_losses(_trainer(tmp_path, data, backend), 20)
    assert max(abs(p - q) for p, q in zip(runs["masked"], runs["csr"], strict=True)) < 1e-4


def test_cuda_run_learns_and_matches_the_cpu_run(tmp_path: Path, tiny) -> None:
    cfg = tiny(**{"sparse.density": 0.2})
    [cpu] = run_experiment([build_config({**cfg, "name": "cpu"})], tmp_path, progress_bar=False)
    [gpu] = run_experiment([build_config({**cfg, "name": "gpu", "device": "cuda"})], tmp_path, progress_bar=False)
    L = gpu.loss_matrix
    for j in range(3):
        assert L[j + 1][j] < L[j][j] - 0.3
    assert gpu.params_nonzero == cpu.params_nonzero  # masks are drawn on the CPU generator: same topology
    assert L[0] == pytest.approx(cpu.loss_matrix[0], abs=1e-4)  # same init, same validation windows
    for a, b in zip(L[1:], cpu.loss_matrix[1:], strict=True):  # kernels differ; trajectories stay close
        assert a == pytest.approx(b, abs=0.05)


def test_cuda_same_seed_same_matrix(tmp_path: Path, tiny) -> None:
    cfg = tiny(**{"sparse.density": 0.2, "device": "cuda"})
    [a] = run_experiment([build_config({**cfg, "name": "a"})], tmp_path, progress_bar=False)
    [b] = run_experiment([build_config({**cfg, "name": "b"})], tmp_path, progress_bar=False)
    assert a.loss_matrix == b.loss_matrix and a.acc_matrix == b.acc_matrix


@pytest.mark.parametrize("backend", ["masked", "csr"])
def test_bfloat16_autocast_on_cuda(tmp_path: Path, tiny, backend: str) -> None:
    base = {"sparse.density": 0.1, "sparse.backend": backend, "device": "cuda"}
    [f32] = run_experiment([build_config(tiny(name="f", **base))], tmp_path, progress_bar=False)
    [bf16] = run_experiment([build_config(tiny(name="b", dtype="bfloat16", **base))], tmp_path, progress_bar=False)
    assert f32.loss_matrix[0] == bf16.loss_matrix[0]  # evaluation stays float32
    assert f32.loss_matrix[1] != bf16.loss_matrix[1]
    for a, b in zip(f32.loss_matrix[-1], bf16.loss_matrix[-1], strict=True):
        assert abs(a - b) < 0.1


def test_sdpa_math_switch_equals_fused_kernel_on_cuda() -> None:
    from sparsecl.config import ModelConfig

    torch.manual_seed(0)
    fused = GPT(ModelConfig(n_layer=2, n_head=4, d_model=64, block_size=64, vocab_size=256)).cuda()
    math = GPT(ModelConfig(n_layer=2, n_head=4, d_model=64, block_size=64, vocab_size=256,
                           attn_backend="math")).cuda()
    math.load_state_dict(fused.state_dict())
    x = torch.randint(256, (2, 64), device="cuda")
    assert rel(math(x), fused(x)) < 1e-5


def test_cuda_resume_after_kill_equals_uninterrupted_and_probes_run_on_cpu(tmp_path: Path, tiny) -> None:
    cfg = tiny(**{"sparse.density": 0.3, "model.dropout": 0.1, "device": "cuda"})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    killed = _cli(["run", str(path), "--out", str(tmp_path / "k"), "--no-progress"], {"SPARSECL_KILL_AT_STEP": "18"})
    assert killed.returncode == 137, killed.stderr
    resumed = _cli(["resume", str(tmp_path / "k"), "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr
    ref = _cli(["run", str(path), "--out", str(tmp_path / "ref"), "--no-progress"])
    assert ref.returncode == 0, ref.stderr

    def metrics(out: str) -> dict:
        s = json.loads((tmp_path / out / "tiny" / "summary.json").read_text())
        return {k: v for k, v in s.items() if k not in TIMING_KEYS}

    assert metrics("k") == metrics("ref")
    run_dir = str(tmp_path / "ref" / "tiny")
    values = {}
    for device in ("cpu", "cuda"):  # CUDA-trained checkpoints probe alike on either device
        probed = _cli(["probe", run_dir, "--probes", "weight_grad_norm,effective_rank", "--device", device])
        assert probed.returncode == 0, probed.stderr
        entries = json.loads((tmp_path / "ref" / "tiny" / "probes.json").read_text())["probes"]
        values[device] = [(e["phase"], p, k, v) for e in entries for p, d in e["values"].items() for k, v in d.items()
                          if isinstance(v, float)]
    assert [e[0] for e in values["cpu"]][-1] == 3 and len(values["cpu"]) > 6
    for (ph, p, k, a), (ph2, p2, k2, b) in zip(values["cpu"], values["cuda"], strict=True):
        assert (ph, p, k) == (ph2, p2, k2)
        assert a == pytest.approx(b, rel=1e-3, abs=1e-6), (ph, p, k)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason="2:4 semi-structured kernels need CUDA sm80+")
def test_semi24_forward_and_gradients_match_masked_under_bf16() -> None:
    """backend=semi24 on a 2:4 mask: the 2:4 kernel takes the forward (bf16 autocast) and equals masked within
    bf16 rounding; gradients (masked backward) too, and the weight gradient is 0 off the mask."""
    from sparsecl.config import SparseConfig
    from sparsecl.model.gpt import MaskableLinear
    from sparsecl.rng import keyed_generator
    from sparsecl.sparse.semi import SemiStructuredLinear, semi24_runs
    from sparsecl.sparse.topology import TOPOLOGIES

    cfg = SparseConfig(density=0.5, topology="nm", nm_n=2, nm_m=4)
    mask = TOPOLOGIES["nm"](256, 512, 0.5, keyed_generator(0, "t"), cfg).cuda()
    torch.manual_seed(0)
    ref = MaskableLinear(512, 256, True, ["x"]).cuda()
    torch.nn.init.normal_(ref.weight, std=0.05)
    ref.set_weight(ref.weight.detach(), mask)
    semi = SemiStructuredLinear.from_masked(copy_layer(ref))
    x = torch.randn(4, 64, 512, device="cuda")
    outs = []
    for mod in (ref, semi):
        xi = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert semi24_runs(xi, 256, 512)
            y = mod(xi)
        y.float().square().sum().backward()
        outs.append((y.float(), xi.grad, mod.weight.grad))
    for a, b in zip(outs[0], outs[1], strict=True):
        assert rel(b, a) < 2e-2
    assert float(outs[1][2][~mask].abs().max()) == 0.0


def copy_layer(mod: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(mod)


def test_block_matches_masked_on_cuda() -> None:
    from sparsecl.config import SparseConfig
    from sparsecl.model.gpt import MaskableLinear
    from sparsecl.rng import keyed_generator
    from sparsecl.sparse.block import BlockLinear
    from sparsecl.sparse.topology import TOPOLOGIES

    cfg = SparseConfig(density=0.1, topology="block", block=32)
    mask = TOPOLOGIES["block"](256, 512, 0.1, keyed_generator(0, "t"), cfg).cuda()
    torch.manual_seed(0)
    ref = MaskableLinear(512, 256, True, ["x"]).cuda()
    torch.nn.init.normal_(ref.weight, std=0.05)
    ref.set_weight(ref.weight.detach(), mask)
    blk = BlockLinear.from_masked(copy_layer(ref), 32)
    x = torch.randn(300, 512, device="cuda")
    res = []
    for mod in (ref, blk):
        xi = x.clone().requires_grad_()
        y = mod(xi)
        y.square().sum().backward()
        w = mod.weight.grad[mask] if mod is ref else mod.values.grad
        res.append((y, xi.grad, w))
    for a, b in zip(res[0], res[1], strict=True):
        assert rel(b, a) < 1e-5
