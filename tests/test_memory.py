"""The training-memory formula (sparsecl.train.memory) against hand computations and against what autograd
really saves for a training step of the GPT."""

from __future__ import annotations

import pytest
import torch

from sparsecl.config import ModelConfig
from sparsecl.model.gpt import GPT
from sparsecl.train.memory import SCALE_ARMS, Shape, estimate

S = Shape(n_layer=2, n_head=2, d_model=8, block_size=4, vocab=16)
# by hand: a block has qkv 3*64 + o 64 + up 8*32 + down 32*8 + two LayerNorms 2*8 = 784 parameters; the root
# wte 16*8 + wpe 4*8 + ln_f 8 = 168; P = 2*784 + 168 = 1736. Micro-batch 3 x block 4 = 12 tokens.


def test_single_process_fp32_by_hand() -> None:
    e = estimate(S, micro_batch=3)
    assert e["params"] == 1736
    assert (e["weights"], e["gradients"], e["optimizer"]) == (4 * 1736, 4 * 1736, 8 * 1736)
    # per token and block (fp32): LN inputs 2*4*8 + LN outputs 2*4*8 + qkv 3*4*8 + attention output 4*8
    # + up and GELU outputs 2*4*32 + log-sum-exp 4*2 + LN mean/rstd 16 = 536;
    # head: ln_f in 4*8 + out 4*8 + log-softmax 4*16 + ids, targets, stats 24 = 152
    assert e["activations"] == 12 * (2 * 536 + 152) == 14688
    assert (e["autocast_copies"], e["buffers"], e["transient"]) == (0, 0, 8 * 16 * 12)
    # the end of the backward (gradients + first block 536*12 + half of it flowing back) outweighs its start
    assert e["peak"] == 4 * 1736 + 8 * 1736 + max(14688 + 1536, 4 * 1736 + 6432 + 3216) == 37424


def test_ddp_bf16_by_hand() -> None:
    e = estimate(S, micro_batch=3, ranks=2, sharding="none", dtype="bfloat16")
    # bf16 block per token: 64 (fp32 LN inputs) + 2*2*8 + 3*2*8 + 2*8 + 2*2*32 + 8 + 16 = 312; head 32+16+64+24
    assert e["activations"] == 12 * (2 * 312 + 136) == 9120
    assert e["autocast_copies"] == 2 * (2 * (4 * 64 + 2 * 8 * 32) + 16 * 8) == 3328  # matmul weights, lm_head
    assert e["buffers"] == 4 * 1736  # DDP gradient buckets
    assert e["peak"] == 4 * 1736 + 8 * 1736 + 4 * 1736 + max(9120 + 3328 + 1536, 4 * 1736 + 3744 + 1872)


def test_fsdp_bf16_checkpointed_by_hand() -> None:
    e = estimate(S, micro_batch=3, ranks=4, sharding="full", checkpointing=True, dtype="bfloat16")
    assert (e["weights"], e["gradients"], e["optimizer"]) == (1736, 1736, 3472)  # a quarter each
    # kept block inputs 2 * 4*8 * 12, then the larger of one rebuilt block 312 * 12 and the head 136 * 12
    assert e["activations"] == 768 + 3744
    assert e["autocast_copies"] == 0
    assert e["buffers"] == 168 * 2 + 2 * 784 * (2 + 4)  # root gathered in bf16, two blocks' params + grads
    assert e["peak"] == 1736 + 3472 + 9744 + max(4512 + 1536, 1736 + 3744 + 1872) == 22304


def test_sharding_and_checkpointing_only_ever_lower_the_big_terms() -> None:
    s = SCALE_ARMS["b1"]
    ddp = estimate(s, 4, ranks=8, dtype="bfloat16")
    fsdp = estimate(s, 4, ranks=8, sharding="full", dtype="bfloat16")
    ac = estimate(s, 4, ranks=8, sharding="full", checkpointing=True, dtype="bfloat16")
    assert fsdp["weights"] * 8 == ddp["weights"] and fsdp["peak"] < ddp["peak"]
    assert ac["activations"] < fsdp["activations"] / 5 and ac["peak"] < fsdp["peak"]
    with pytest.raises(ValueError):
        estimate(s, 0)


@pytest.mark.parametrize("arm", ["m100", "m500", "b1"])
def test_parameter_count_is_the_models(arm: str) -> None:
    s = SCALE_ARMS[arm]
    with torch.device("meta"):
        model = GPT(ModelConfig(n_layer=s.n_layer, n_head=s.n_head, d_model=s.d_model, block_size=s.block_size))
    assert s.params() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_activations_equal_what_autograd_saves(dtype: str) -> None:
    """Distinct storages autograd keeps for backward (parameters excluded) = activations + autocast copies."""
    s = Shape(n_layer=2, n_head=4, d_model=64, block_size=32)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=4, d_model=64, block_size=32))
    x, y = torch.randint(0, 256, (3, 32)), torch.randint(0, 256, (3, 32))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            kept[st.data_ptr()] = st.nbytes()
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model.loss(x, y)
    e = estimate(s, 3, dtype=dtype)  # type: ignore[arg-type]
    # the formula leaves out the 0-d loss scalars autograd also keeps (a few bytes)
    assert sum(kept.values()) == pytest.approx(e["activations"] + e["autocast_copies"], rel=2e-3)
    loss.backward()
