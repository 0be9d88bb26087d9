"""Built-in verifiable tasks: prompt/response pairs with an exact-match reward, cut from the synthetic domains.

A task reuses the documents of its synthetic domain (``data.synthetic``), so the facts, sums and ciphers are
the same text the LM domains hold; only the framing differs. A pair's answer ends with the document separator
token, which is also what greedy decoding and sampling stop at. Pairs are split into train and validation by
the same document hash as LM domains (``domains.split_documents``), applied to ``prompt + response``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from sparsecl.config import DomainSpec
from sparsecl.data import synthetic

Pair = tuple[str, str]


def exact_match(completion: str, response: str) -> float:
    """1.0 if the completion (up to its end-of-answer token, surrounding spaces ignored) is the response."""
    return float(completion.strip() == response.strip())


def arith_pairs(target_bytes: int) -> list[Pair]:
    """'Q: a + b = ?\\nA: ' -> the result (the worked solution of the LM domain is left out)."""
    out = []
    for doc in synthetic.arithmetic(target_bytes):
        for q, a in re.findall(r"(Q: [^\n]*= \?)\nW: [^\n]*\nA: (-?\d+)", doc):
            out.append((f"{q}\nA: ", a))
    return out


def dyck_pairs(target_bytes: int) -> list[Pair]:
    """A balanced string cut where brackets are open -> the closing brackets that complete it."""
    close = {"(": ")", "[": "]", "{": "}", "<": ">"}
    rng = random.Random(2102)
    out = []
    for doc in synthetic.dyck(target_bytes):
        for line in doc.splitlines():
            s = line.split(" ")[0]
            stack, cuts = [], []
            for i, ch in enumerate(s):
                if ch in close:
                    stack.append(close[ch])
                else:
                    stack.pop()
                if stack:
                    cuts.append((i + 1, "".join(reversed(stack))))
            if cuts:
                cut, rest = cuts[rng.randrange(len(cuts))]
                out.append((f"close: {s[:cut]} => ", rest))
    return out


def cipher_pairs(target_bytes: int) -> list[Pair]:
    """'rotK decode: <first two cipher words> => ' -> their plain text."""
    out = []
    for doc in synthetic.cipher(target_bytes):
        for line in doc.splitlines():
            m = re.match(r"rot(\d+): (.*) => (.*)", line)
            if m:
                plain, code = m.group(2).split()[:2], m.group(3).split()[:2]
                out.append((f"rot{m.group(1)} decode: {' '.join(code)} => ", " ".join(plain)))
    return out


def facts_pairs(target_bytes: int) -> list[Pair]:
    """Questions about the fixed pool of invented entities -> the city, colour or number of books."""
    forms = [(r"(\w+) lives in (\w+)\.", "where does {} live? "),
             (r"the favourite colour of (\w+) is (\w+)\.", "colour of {}? "),
             (r"(\w+) owns (\d+) books\.", "books of {}? ")]
    out = []
    for doc in synthetic.facts(target_bytes):
        for line in doc.splitlines():
            for rx, prompt in forms:
                m = re.fullmatch(rx, line)
                if m:
                    out.append((prompt.format(m.group(1)), m.group(2)))
    return out


@dataclass(frozen=True)
class Task:
    make: Callable[[int], list[Pair]]
    reward: Callable[[str, str], float]
    description: str


TASKS: dict[str, Task] = {
    "arith_qa": Task(arith_pairs, exact_match, "the result of an addition or subtraction (from arith)"),
    "dyck_qa": Task(dyck_pairs, exact_match, "the closing brackets that balance a prefix (from dyck)"),
    "cipher_qa": Task(cipher_pairs, exact_match, "Caesar decoding of two words (from cipher)"),
    "facts_qa": Task(facts_pairs, exact_match, "a city, colour or count of an invented entity (from facts)"),
}


def is_task(spec: DomainSpec) -> bool:
    """Prompt/response pairs with an exact-match reward: a built-in task or a jsonl with both fields."""
    return bool(spec.response_field) or (spec.source == "builtin" and spec.name in TASKS)


def dedupe(pairs: list[Pair]) -> list[Pair]:
    """First pair per prompt: a prompt with two answers would make exact match ambiguous."""
    first: dict[str, Pair] = {}
    for p in pairs:
        first.setdefault(p[0], p)
    return list(first.values())
