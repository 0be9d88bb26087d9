"""Split a global density over layers: 'uniform' (same rho everywhere) or 'erk' (RigL)."""

from __future__ import annotations


def uniform(shapes: dict[str, tuple[int, int]], density: float) -> dict[str, float]:
    return {name: density for name in shapes}


def erk(shapes: dict[str, tuple[int, int]], density: float) -> dict[str, float]:
    """Erdos-Renyi-Kernel allocation (Evci et al. 2020, RigL): rho_l = eps * (in+out)/(in*out).

    Layers whose rho_l would exceed 1 are made dense and eps is re-solved over the rest, so the total
    number of kept weights equals density * total and no layer exceeds 1.
    """
    if density >= 1.0:
        return {n: 1.0 for n in shapes}
    total = sum(o * i for o, i in shapes.values())
    dense_set: set[str] = set()
    while True:
        budget = density * total - sum(shapes[n][0] * shapes[n][1] for n in dense_set)
        raw = {n: (o + i) / (o * i) for n, (o, i) in shapes.items() if n not in dense_set}
        denom = sum(raw[n] * shapes[n][0] * shapes[n][1] for n in raw)
        eps = budget / denom
        over = [n for n in raw if eps * raw[n] > 1.0]
        if not over:
            break
        dense_set.update(over)
    out = {n: 1.0 for n in dense_set}
    out.update({n: eps * r for n, r in raw.items()})
    return out


ALLOCATIONS = {"uniform": uniform, "erk": erk}
