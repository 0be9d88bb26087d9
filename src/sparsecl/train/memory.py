"""Training memory per GPU of this repository's GPT: the one formula behind the scale preset's memory table.

Inputs are the model shape and how a step runs: ranks, sharding ('none' = each rank holds everything, as
one process or DDP; 'full' = FSDP), activation checkpointing per block, fp32 or bf16 autocast and the
micro-batch each rank runs. It counts bytes the way ``sparsecl.model.gpt`` and the trainer use them, so a
measurement on a CPU checks it (``benchmarks/memory_table.py``):

- weights fp32 (4 B/param), gradients fp32 (4), AdamW exp_avg + exp_avg_sq fp32 (8; the fused kernel, no
  temporaries); FSDP divides all three by the ranks;
- activations: what autograd saves for backward, per token. A block saves its two LayerNorm inputs (fp32),
  the inputs of its four matmuls (qkv, o, up, down: the LayerNorm outputs, the attention output, the GELU
  output), the qkv output kept by SDPA, the MLP pre-activation kept by GELU, and a log-sum-exp per head
  (fp32; flash/memory-efficient attention keeps no T x T matrix, and its output is laid out so that the
  transpose into the o projection is a view). That is 16·C elements per token at F = 4C; Korthikanti et al.
  2022 ("Reducing Activation Recomputation in Large Transformer Models", §4.1) count 34·s·b·h bytes at
  2 B/element, i.e. 17 elements, because they include dropout masks this model does not have at dropout 0.
  Under bf16 autocast the matmul inputs/outputs are bf16 while LayerNorm inputs and the log-softmax stay fp32.
  The head keeps ln_f's input and output and the fp32 log-softmax (V per token). With checkpointing each block
  keeps only its input; the head's activations are gone before the first block is rebuilt in backward;
- autocast copies: bf16 casts of every matmul weight (the lm_head is the tied embedding), cached for the
  step and saved for backward (not with FSDP, whose all-gathered parameters are already bf16);
- buffers: DDP's gradient buckets (a copy of all gradients; ``gradient_as_bucket_view=True`` removes them);
  FSDP's unsharded parameters and gradients of the blocks in flight (the one computing and the one being
  prefetched, in bf16 under autocast) plus the root's embeddings, which stay gathered.

The peak is when the backward starts (activations, casts and the gradient of the logits alive) or when it
reaches the first block (nearly all gradients, that block's activations and the gradients flowing through it),
on top of weights, optimizer state and buffers. Allocator caching and
fragmentation (a few % on CUDA) and the CUDA context (~0.5 GB) are not included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

GiB = 2**30


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_head: int
    d_model: int
    block_size: int
    vocab: int = 256
    d_ff: int = 0  # 0: 4 * d_model, as ModelConfig

    @property
    def hidden(self) -> int:
        return self.d_ff or 4 * self.d_model

    def block_params(self) -> int:
        C, F = self.d_model, self.hidden
        return 4 * C * C + 2 * C * F + 2 * C  # qkv, o, up, down, two LayerNorm weights (no biases)

    def root_params(self) -> int:
        return (self.vocab + self.block_size) * self.d_model + self.d_model  # wte (tied lm_head), wpe, ln_f

    def params(self) -> int:
        return self.n_layer * self.block_params() + self.root_params()

    def matmul_params(self) -> int:
        """Weights that go through a matmul (cast to bf16 under autocast): block projections and lm_head."""
        C, F = self.d_model, self.hidden
        return self.n_layer * (4 * C * C + 2 * C * F) + self.vocab * C


def block_activation_bytes(s: Shape, dtype: str) -> int:
    """Bytes one block saves for backward per token (see the module docstring)."""
    C, F, H = s.d_model, s.hidden, s.n_head
    a = 2 if dtype == "bfloat16" else 4  # matmul inputs and outputs
    ln_stats = 2 * 2 * 4  # mean and rstd of two LayerNorms
    return (2 * 4 * C  # LayerNorm inputs (fp32 residual stream)
            + 2 * a * C  # LayerNorm outputs as matmul inputs
            + 3 * a * C  # qkv output (q, k, v kept by SDPA)
            + a * C  # SDPA output (the o projection's input is a view of it)
            + 2 * a * F  # up output (kept by GELU) and GELU output (into down)
            + 4 * H + ln_stats)  # log-sum-exp per head


def head_activation_bytes(s: Shape, dtype: str) -> int:
    """Per token: ln_f input (fp32) and output (matmul input), fp32 log-softmax, token ids and targets."""
    a = 2 if dtype == "bfloat16" else 4
    return 4 * s.d_model + a * s.d_model + 4 * s.vocab + 2 * 4 + 8 + 8


def estimate(s: Shape, micro_batch: int, ranks: int = 1, sharding: Literal["none", "full"] = "none",
             checkpointing: bool = False, dtype: Literal["float32", "bfloat16"] = "float32") -> dict[str, Any]:
    """Bytes per GPU of one training step (see the module docstring); 'peak' is their sum at the worst moment."""
    if ranks < 1 or micro_batch < 1:
        raise ValueError("ranks and micro_batch must be >= 1")
    if sharding not in ("none", "full") or dtype not in ("float32", "bfloat16"):
        raise ValueError("sharding is 'none' or 'full'; dtype is 'float32' or 'bfloat16'")
    P = s.params()
    shard = ranks if sharding == "full" else 1
    weights, gradients, optimizer = 4 * P // shard, 4 * P // shard, 8 * P // shard
    tokens = micro_batch * s.block_size
    block = block_activation_bytes(s, dtype) * tokens
    head = head_activation_bytes(s, dtype) * tokens
    if checkpointing:  # block inputs, plus the head at the end of the forward or one rebuilt block in backward
        activations = s.n_layer * 4 * s.d_model * tokens + max(block, head)
    else:
        activations = s.n_layer * block + head
    bf16 = dtype == "bfloat16"
    if sharding == "full":
        pb = 2 if bf16 else 4
        casts = 0
        buffers = s.root_params() * pb + 2 * s.block_params() * (pb + 4) if ranks > 1 else 0
    else:
        casts = 2 * s.matmul_params() if bf16 else 0
        buffers = 4 * P if ranks > 1 else 0  # DDP gradient buckets
    transient = 2 * 4 * s.vocab * tokens  # gradients of the log-probabilities and logits as backward starts
    # at the end of the backward: the gradients, the first block's activations (rebuilt when checkpointing)
    # and the gradients flowing through that block (about half its activations: the F-wide ones)
    late = gradients + block + block // 2
    static = weights + optimizer + buffers
    peak = static + max(activations + casts + transient, late)
    return {"params": P, "weights": weights, "gradients": gradients, "optimizer": optimizer,
            "activations": activations, "autocast_copies": casts, "buffers": buffers, "transient": transient,
            "peak": peak}


SCALE_ARMS = {  # the scale preset's arms (src/sparsecl/presets/scale.yaml), block_size 1024, byte vocabulary
    "m100": Shape(n_layer=14, n_head=12, d_model=768, block_size=1024),
    "m500": Shape(n_layer=18, n_head=24, d_model=1536, block_size=1024),
    "b1": Shape(n_layer=20, n_head=32, d_model=2048, block_size=1024),
}
