"""The forgetting-law probe (Shenfeld et al. 2025, RL's Razor, arXiv 2509.04259; DESIGN §10).

``KL(pi_before || pi_after)`` of the next-token distributions, averaged over the token positions of a
domain's probe windows, with pi_before the model at the previous phase end. The paper finds that this KL,
measured on the new task's data, predicts how much an update forgets, whichever algorithm made it; the report
relates it to measured forgetting across every run of a folder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from sparsecl.probes import register

if TYPE_CHECKING:
    from sparsecl.probes.context import ProbeContext


def forward_kl(before_logits: torch.Tensor, after_logits: torch.Tensor) -> float:
    """mean over positions of sum_v p_before(v) (log p_before(v) - log p_after(v)), in nats."""
    lb = F.log_softmax(before_logits.double(), -1)
    la = F.log_softmax(after_logits.double(), -1)
    return float((lb.exp() * (lb - la)).sum(-1).mean())


@register("forgetting_kl", "forward KL(previous phase end || now) of next-token distributions on the new "
          "phase's domains (kl_new) and on each old domain (kl_old)", "2 forwards per seen domain")
def forgetting_kl(ctx: ProbeContext) -> dict[str, float]:
    before = ctx.model_at(ctx.prev_phase())
    if before is None:
        return {}
    out: dict[str, float] = {}
    with torch.no_grad():
        for d in dict.fromkeys([*ctx.current, *ctx.old]):
            # the logits of both models on the probe batch, from the feature forwards other probes share (and the
            # previous point computed): lm_head of the final LayerNorm's output is bitwise what model(x) returns
            fb, fa = ctx.features(d, ctx.prev_phase()), ctx.features(d)
            assert fb is not None and fb.final_all is not None and fa.final_all is not None
            out[f"{d}/kl"] = forward_kl(before.lm_head(fb.final_all), ctx.model.lm_head(fa.final_all))
    new = [out[f"{d}/kl"] for d in ctx.current]
    old = [out[f"{d}/kl"] for d in ctx.old]
    out["kl_new"] = sum(new) / len(new)
    if old:
        out["kl_old"] = sum(old) / len(old)
    return out
