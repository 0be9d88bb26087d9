"""GRPO (Shao et al. 2024, arXiv 2402.03300) as defined in DESIGN §10.

Per prompt, G completions are sampled from the policy at the start of the step; advantages are the rewards
normalised within the group; the loss is minus ``mean_k mean_t min(rho A, clip(rho, 1-c, 1+c) A) - beta KL_t``
with ``rho`` the per-token ratio to the sampling policy and ``KL_t = q/p - log(q/p) - 1`` (p the policy, q the
reference: the model at the start of the phase). Prompts and samples are keyed by (seed, phase, step), so a
resume draws what an uninterrupted run would; the reference is saved with mid-phase checkpoints.

The method's ``training_loss`` and ``after_backward`` take a token batch and are not called in RL phases (so
EWC/SI penalties, replay and A-GEM/SAM gradient changes do not act there); its phase hooks and ``after_step``
are.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsecl.data.tasks import exact_match
from sparsecl.rng import keyed_generator
from sparsecl.store.checkpoint import model_tensors, split_prefix
from sparsecl.train.objectives.base import Objective, StepLoss
from sparsecl.train.objectives.sampling import answer_text, complete, prompt_tokens, valid_mask
from sparsecl.train.objectives.sft import draw_pairs

if TYPE_CHECKING:
    from sparsecl.train.trainer import Trainer

EPS = 1e-4
"""eps of the advantage normalisation: a group whose rewards are all equal gets advantages 0."""


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(r_k - mean(r)) / (std(r) + eps) within each row of (prompts, G) rewards (unbiased std, as torch.std)."""
    return (rewards - rewards.mean(-1, keepdim=True)) / (rewards.std(-1, keepdim=True) + EPS)


def kl_estimate(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Per-token ``q/p - log(q/p) - 1`` (>= 0, 0 where the policy equals the reference)."""
    d = logq - logp
    return torch.exp(d) - d - 1


def token_logps(model: nn.Module, seq: torch.Tensor, start: int, temperature: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of seq[:, start:] under softmax(logits / T), and the entropy at those positions."""
    logits = model(seq[:, :-1])[:, start - 1:].float() / temperature
    logp_all = F.log_softmax(logits, -1)
    logp = logp_all.gather(-1, seq[:, start:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def clipped_objective(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, adv: torch.Tensor,
                      mask: torch.Tensor, clip: float, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean_k mean_t [min(rho A, clip(rho) A) - beta KL_t]`` over (G, L) tokens with ``mask``; and mean KL."""
    rho = torch.exp(logp - old_logp)
    a = adv[:, None]
    surrogate = torch.minimum(rho * a, rho.clamp(1 - clip, 1 + clip) * a)
    kl = kl_estimate(logp, ref_logp)
    m = mask.float()
    n = m.sum(1).clamp_min(1)
    per = ((surrogate - beta * kl) * m).sum(1) / n
    return per.mean(), ((kl * m).sum(1) / n).mean().detach()


class GRPO(Objective):
    name = "rl"

    def __init__(self) -> None:
        self.ref: nn.Module | None = None

    def begin_phase(self, trainer: Trainer, phase: int) -> None:
        self._set_ref(trainer)

    def _set_ref(self, trainer: Trainer) -> None:
        self.ref = copy.deepcopy(trainer.model).eval()
        for p in self.ref.parameters():
            p.requires_grad_(False)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.ref is None else {f"ref.{k}": v for k, v in model_tensors(self.ref).items()}

    def load_state(self, trainer: Trainer, tensors: dict[str, torch.Tensor]) -> None:
        self._set_ref(trainer)
        assert self.ref is not None
        state = {k: v.to(trainer.device) for k, v in split_prefix(tensors, "ref.").items()}
        self.ref.load_state_dict(state, strict=False)

    def step_loss(self, trainer: Trainer, domains: list[str], phase: int, step: int) -> StepLoss:
        cfg, rl = trainer.cfg, trainer.cfg.rl
        if self.ref is None:
            self._set_ref(trainer)
        G, L, block = rl.group_size, rl.completion_length, cfg.model.block_size
        n_prompts = rl.prompts or max(1, cfg.train.batch_size // G)
        doms = [trainer.domains[d] for d in domains]
        pairs = draw_pairs(doms, n_prompts, keyed_generator(cfg.seed, "rl-prompts", phase, step))
        gen = keyed_generator(cfg.seed, "rl-sample", phase, step)
        model = trainer.model
        total: torch.Tensor | Any = 0.0
        stats = {"reward": 0.0, "kl": 0.0, "entropy": 0.0, "completion_length": 0.0}
        tokens = 0
        for prompt, response in pairs:
            p = prompt_tokens(prompt, block, L, trainer.tokenizer)
            model.eval()
            comp = complete(model, p, G, L, rl.temperature, gen)
            model.train()
            mask = valid_mask(comp)
            rewards = torch.tensor([exact_match(answer_text(c, trainer.tokenizer), response) for c in comp.cpu()])
            adv = group_advantages(rewards[None])[0].to(comp.device)
            seq = torch.cat([p.to(comp.device)[None].repeat(G, 1), comp], 1)
            start = p.numel()
            with torch.no_grad():
                was = model.training
                model.eval()
                old_logp, _ = token_logps(model, seq, start, rl.temperature)
                model.train(was)
                assert self.ref is not None
                ref_logp, _ = token_logps(self.ref, seq, start, rl.temperature)
            logp, entropy = token_logps(model, seq, start, rl.temperature)
            obj, kl = clipped_objective(logp, old_logp, ref_logp, adv, mask, rl.clip, rl.beta)
            total = total - obj / len(pairs)
            m = mask.float()
            stats["reward"] += float(rewards.mean()) / len(pairs)
            stats["kl"] += float(kl) / len(pairs)
            stats["entropy"] += float(((entropy.detach() * m).sum(1) / m.sum(1).clamp_min(1)).mean()) / len(pairs)
            stats["completion_length"] += float(m.sum(1).mean()) / len(pairs)
            tokens += int(seq.numel())
        return StepLoss(total, tokens, stats)

    def summary(self, log: list[dict[str, Any]]) -> dict[str, float]:
        """Means over the phase's steps, and the reward of its first and last tenth (did RL raise it?)."""
        if not log:
            return {}
        k = max(1, len(log) // 10)
        out = {key: sum(r[key] for r in log) / len(log) for key in ("reward", "kl", "entropy", "completion_length")}
        out["reward_first"] = sum(r["reward"] for r in log[:k]) / k
        out["reward_last"] = sum(r["reward"] for r in log[-k:]) / k
        return out
