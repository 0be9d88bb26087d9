"""Joint training: the upper reference. Every phase samples the mixture of all scheduled domains.

It keeps the schedule's phase boundaries and step counts (so the total steps match the sequential arms
and its loss matrix lines up row by row with theirs); every domain counts as first trained in phase 1.
"""

from sparsecl.methods.base import Method


class Joint(Method):
    name = "joint"
    rl_refused = "it trains every phase on all scheduled domains, but an rl phase samples task prompts only"

    def phase_domains(self, phase: int, domains: list[str], all_domains: list[str]) -> list[str]:
        return list(all_domains)
