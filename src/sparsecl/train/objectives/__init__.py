"""Phase objectives (DESIGN §10): what one training step optimises, chosen per phase by ``objective``.

``lm`` and ``sft`` build a token batch and hand it to the method's ``training_loss`` (sft masks the prompt
tokens of its targets, so every method trains on response tokens only); ``rl`` samples completions and
optimises GRPO. The trainer asks the phase's objective for the step loss and calls the method's other hooks
as usual.
"""

from __future__ import annotations

from sparsecl.train.objectives.base import Objective, StepLoss
from sparsecl.train.objectives.grpo import GRPO
from sparsecl.train.objectives.lm import LM
from sparsecl.train.objectives.sft import SFT

OBJECTIVES: dict[str, type[Objective]] = {"lm": LM, "sft": SFT, "rl": GRPO}

__all__ = ["OBJECTIVES", "GRPO", "LM", "SFT", "Objective", "StepLoss"]
