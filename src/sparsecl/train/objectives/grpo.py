"""GRPO (Shao et al. 2024, arXiv 2402.03300) as defined in DESIGN §10.

Every ``rl.updates_per_batch`` (GRPO's mu) steps, G completions are sampled for each of the step's prompts
from the current policy, which then is pi_old; advantages are the rewards normalised within each group. Each
step optimises minus ``mean_k mean_t [min(rho A, clip(rho, 1-c, 1+c) A) - beta KL_t]`` on that batch, with
``rho = pi / pi_old`` per completion token and ``KL_t = q/p - log(q/p) - 1`` (the k3 estimator; p the policy,
q the reference: the model at the start of the phase). Only completion tokens up to and including the first
end-of-answer token count. All prompts and samples run as one right-padded batch (``sampling``). Prompts and
samples are keyed by (seed, phase, step of sampling), so a resume draws what an uninterrupted run would; the
reference and the batch in use are saved with mid-phase checkpoints.

The method's ``training_loss`` is not called (there is no token batch); its ``add_penalty`` adds a parameter
penalty (EWC, SI, O-LoRA) to this loss and its other hooks run as in any phase. Methods whose hooks need the
token batch are refused when the config is built (``Method.rl_refused``).
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
from sparsecl.train.objectives.sampling import answer_text, complete_batch, pad_right, prompt_tokens, valid_mask
from sparsecl.train.objectives.sft import draw_pairs

if TYPE_CHECKING:
    from sparsecl.train.trainer import Trainer

EPS = 1e-4
"""eps of the advantage normalisation: a group whose rewards are all equal gets advantages 0."""
BATCH_KEYS = ("inp", "lens", "comp", "old_logp", "ref_logp", "adv", "rewards")
"""The sampled batch a group of mu steps shares (saved with mid-phase checkpoints)."""


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(r_k - mean(r)) / (std(r) + eps) within each row of (prompts, G) rewards (unbiased std, as torch.std)."""
    return (rewards - rewards.mean(-1, keepdim=True)) / (rewards.std(-1, keepdim=True) + EPS)


def kl_estimate(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Per-token ``q/p - log(q/p) - 1`` (>= 0, 0 where the policy equals the reference)."""
    d = logq - logp
    return torch.exp(d) - d - 1


def token_logps(model: nn.Module, inp: torch.Tensor, lens: torch.Tensor, comp: torch.Tensor, temperature: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the completions ``comp`` (R, L) under softmax(logits / T), and the entropy there.

    ``inp`` holds row r's prompt at [0, lens[r]) and its completion after it (right-padded); the logits at
    positions lens[r] - 1 .. lens[r] + L - 2 predict the completion's tokens."""
    logits = model(inp)
    pos = lens[:, None] - 1 + torch.arange(comp.shape[1], device=inp.device)  # (R, L)
    sel = logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1])).float() / temperature
    logp_all = F.log_softmax(sel, -1)
    logp = logp_all.gather(-1, comp[..., None]).squeeze(-1)
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
        self.batch: dict[str, torch.Tensor] = {}

    def begin_phase(self, trainer: Trainer, phase: int) -> None:
        self._set_ref(trainer)

    def _set_ref(self, trainer: Trainer) -> None:
        self.ref = copy.deepcopy(trainer.model).eval()
        for p in self.ref.parameters():
            p.requires_grad_(False)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {} if self.ref is None else {f"ref.{k}": v for k, v in model_tensors(self.ref).items()}
        return {**out, **{f"batch.{k}": v for k, v in self.batch.items()}}

    def load_state(self, trainer: Trainer, tensors: dict[str, torch.Tensor]) -> None:
        self._set_ref(trainer)
        assert self.ref is not None
        state = {k: v.to(trainer.device) for k, v in split_prefix(tensors, "ref.").items()}
        self.ref.load_state_dict(state, strict=False)
        self.batch = {k: v.to(trainer.device) for k, v in split_prefix(tensors, "batch.").items()}

    def sample(self, trainer: Trainer, domains: list[str], phase: int, step: int) -> dict[str, torch.Tensor]:
        """The step's prompts, G completions each, their rewards, advantages and the log-probabilities of
        pi_old (the policy now) and of the reference."""
        cfg, rl = trainer.cfg, trainer.cfg.rl
        assert self.ref is not None
        G, L, block = rl.group_size, rl.completion_length, cfg.model.block_size
        n_prompts = rl.prompts or max(1, cfg.train.batch_size // G)
        pairs = draw_pairs([trainer.domains[d] for d in domains], n_prompts,
                           keyed_generator(cfg.seed, "rl-prompts", phase, step))
        prompts = [prompt_tokens(p, block, L, trainer.tokenizer) for p, _ in pairs for _ in range(G)]
        model = trainer.model
        model.eval()
        try:
            gen = keyed_generator(cfg.seed, "rl-sample", phase, step)
            comp = complete_batch(model, prompts, L, rl.temperature, gen)
            inp, lens = pad_right(prompts, max(p.numel() for p in prompts) + L - 1)
            inp, lens = inp.to(comp.device), lens.to(comp.device)
            rows = torch.arange(len(prompts), device=comp.device)[:, None]
            inp[rows, lens[:, None] + torch.arange(L - 1, device=comp.device)] = comp[:, :-1]
            with torch.no_grad():
                old_logp, _ = token_logps(model, inp, lens, comp, rl.temperature)
                ref_logp, _ = token_logps(self.ref, inp, lens, comp, rl.temperature)
        finally:
            model.train()
        texts = [answer_text(c, trainer.tokenizer) for c in comp.cpu()]
        rewards = torch.tensor([exact_match(texts[i], pairs[i // G][1]) for i in range(len(texts))]).view(-1, G)
        return {"inp": inp, "lens": lens, "comp": comp, "old_logp": old_logp, "ref_logp": ref_logp,
                "adv": group_advantages(rewards).view(-1).to(comp.device), "rewards": rewards}

    def step_loss(self, trainer: Trainer, domains: list[str], phase: int, step: int) -> StepLoss:
        rl = trainer.cfg.rl
        if self.ref is None:
            self._set_ref(trainer)
        mu = rl.updates_per_batch
        if step % mu == 0 or not self.batch:  # a new batch every mu steps (a resume restores the one in use)
            self.batch = self.sample(trainer, domains, phase, step - step % mu)
        b = self.batch
        logp, entropy = token_logps(trainer.model, b["inp"], b["lens"], b["comp"], rl.temperature)
        mask = valid_mask(b["comp"])
        obj, kl = clipped_objective(logp, b["old_logp"], b["ref_logp"], b["adv"], mask, rl.clip, rl.beta)
        m = mask.float()
        n = m.sum(1).clamp_min(1)
        stats = {"reward": float(b["rewards"].float().mean()), "kl": float(kl),
                 "entropy": float(((entropy.detach() * m).sum(1) / n).mean()),
                 "completion_length": float(m.sum(1).mean())}
        return StepLoss(trainer.method.add_penalty(trainer, -obj), int(b["inp"].numel()), stats)

    def summary(self, log: list[dict[str, Any]]) -> dict[str, float]:
        """Means over the phase's steps, and the reward of its first and last tenth (did RL raise it?)."""
        if not log:
            return {}
        k = max(1, len(log) // 10)
        out = {key: sum(r[key] for r in log) / len(log) for key in ("reward", "kl", "entropy", "completion_length")}
        out["reward_first"] = sum(r["reward"] for r in log[:k]) / k
        out["reward_last"] = sum(r["reward"] for r in log[-k:]) / k
        return out
