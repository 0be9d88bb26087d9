"""Deterministic synthetic skill domains, generated on the fly from a fixed seed per domain.

Each generator returns a list of documents. The text does not depend on the run seed: the data are
fixed, and the run seed only changes the order in which windows are drawn.
"""

from __future__ import annotations

import random
import string


def _words(rng: random.Random, n: int, lo: int = 3, hi: int = 8) -> list[str]:
    cons, vow = "bcdfghjklmnprstvz", "aeiou"
    out = []
    for _ in range(n):
        k = rng.randint(lo, hi)
        out.append("".join(rng.choice(cons) if i % 2 == 0 else rng.choice(vow) for i in range(k)))
    return out


def arithmetic(target_bytes: int) -> list[str]:
    """Multi-digit addition and subtraction with worked, digit-by-digit solutions."""
    rng = random.Random(1001)
    docs, size = [], 0
    while size < target_bytes:
        lines = []
        for _ in range(rng.randint(3, 6)):
            a, b = rng.randint(10, 99999), rng.randint(10, 99999)
            if rng.random() < 0.5:
                steps, carry = [], 0
                da, db = str(a)[::-1], str(b)[::-1]
                for i in range(max(len(da), len(db))):
                    x = int(da[i]) if i < len(da) else 0
                    y = int(db[i]) if i < len(db) else 0
                    s = x + y + carry
                    steps.append(f"{x}+{y}+{carry}={s}")
                    carry = s // 10
                lines.append(f"Q: {a} + {b} = ?\nW: {'; '.join(steps)}\nA: {a + b}")
            else:
                a, b = max(a, b), min(a, b)
                lines.append(f"Q: {a} - {b} = ?\nW: {a} - {b - b % 10} = {a - b + b % 10}; "
                             f"then - {b % 10} = {a - b}\nA: {a - b}")
        doc = "\n".join(lines)
        docs.append(doc)
        size += len(doc) + 1
    return docs


def dyck(target_bytes: int) -> list[str]:
    """Balanced bracket strings over four bracket types, each followed by its nesting depth."""
    rng = random.Random(2002)
    pairs = [("(", ")"), ("[", "]"), ("{", "}"), ("<", ">")]
    docs, size = [], 0
    while size < target_bytes:
        lines = []
        for _ in range(rng.randint(4, 8)):
            stack: list[str] = []
            s, depth = [], 0
            n = rng.randint(4, 30)
            while n > 0 or stack:
                if stack and (n <= 0 or rng.random() < 0.45):
                    s.append(stack.pop())
                else:
                    o, c = rng.choice(pairs)
                    s.append(o)
                    stack.append(c)
                    depth = max(depth, len(stack))
                    n -= 1
            lines.append(f"{''.join(s)} depth={depth}")
        doc = "\n".join(lines)
        docs.append(doc)
        size += len(doc) + 1
    return docs


def facts(target_bytes: int) -> list[str]:
    """Key-value recall: a fixed pool of invented entities, each with fixed attributes.

    Every document states a random handful of facts from the pool, so training and validation documents
    share facts: the domain rewards memorising the pool, which is exactly what forgetting erodes.
    """
    rng = random.Random(3003)
    names = _words(rng, 400, 4, 7)
    cities = _words(rng, 40, 5, 8)
    colours = ["red", "blue", "green", "amber", "violet", "grey", "white", "black"]
    pool = [(n, rng.choice(cities), rng.choice(colours), rng.randint(2, 99)) for n in names]
    docs, size = [], 0
    while size < target_bytes:
        lines = []
        for _ in range(rng.randint(4, 8)):
            n, city, col, num = rng.choice(pool)
            form = rng.randrange(3)
            if form == 0:
                lines.append(f"{n} lives in {city}.")
            elif form == 1:
                lines.append(f"the favourite colour of {n} is {col}.")
            else:
                lines.append(f"{n} owns {num} books.")
        doc = "\n".join(lines)
        docs.append(doc)
        size += len(doc) + 1
    return docs


def cipher(target_bytes: int) -> list[str]:
    """Caesar shifts of pseudo-word sentences: 'rot K: plain => cipher'."""
    rng = random.Random(4004)
    vocab = _words(rng, 2000, 2, 9)
    lower = string.ascii_lowercase
    docs, size = [], 0
    while size < target_bytes:
        lines = []
        for _ in range(rng.randint(3, 6)):
            k = rng.randint(1, 25)
            plain = " ".join(rng.choice(vocab) for _ in range(rng.randint(3, 8)))
            table = str.maketrans(lower, lower[k:] + lower[:k])
            lines.append(f"rot{k}: {plain} => {plain.translate(table)}")
        doc = "\n".join(lines)
        docs.append(doc)
        size += len(doc) + 1
    return docs
