"""Continual-learning metrics, loss form and accuracy form (DESIGN §5).

``L[j][i]`` is the validation loss on domain i after phase j; row 0 is the model at initialisation and
phases are numbered 1..T. ``t[i]`` is the phase in which domain i is first trained (None: never trained).
Sign conventions, stated once and used everywhere:

- forgetting F: positive = forgot (loss rose above its best since the domain was learned);
- BWT: negative = forgot (GEM's backward transfer, loss written so that its sign matches accuracy);
- FWT: positive = earlier phases already lowered the domain's loss before it was trained;
- learned drop D: positive = the domain's loss fell while it was being learned;
- normalised forgetting F/D: positive = forgot, 1.0 = everything learned was lost (only where D > 0);
- bwt_last: negative = forgot since the *last* phase that trained the domain (DESIGN §10).

``s[i]`` is the last phase that trained domain i (``last_trained``); for schedules where no domain recurs
s = t and ``bwt_last`` equals BWT.

Accuracy-form metrics apply the same definitions to accuracy a (higher is better), so the signs keep
their meaning: F_acc > 0 forgot, BWT_acc < 0 forgot, FWT_acc > 0 helped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Matrix = Sequence[Sequence[float]]


def first_trained(phases: Sequence[Sequence[str]], domains: Sequence[str]) -> list[int | None]:
    """t(i): 1-based index of the first phase whose mixture contains domain i."""
    out: list[int | None] = []
    for d in domains:
        out.append(next((j + 1 for j, ph in enumerate(phases) if d in ph), None))
    return out


def last_trained(phases: Sequence[Sequence[str]], domains: Sequence[str]) -> list[int | None]:
    """s(i): 1-based index of the last phase whose mixture contains domain i."""
    out: list[int | None] = []
    for d in domains:
        out.append(next((j + 1 for j in range(len(phases) - 1, -1, -1) if d in phases[j]), None))
    return out


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def average_seen_loss(L: Matrix, t: Sequence[int | None]) -> list[float | None]:
    """A(j) = mean over domains with t(i) <= j of L[j][i], for j = 0..T (None where nothing is seen)."""
    return [_mean([L[j][i] for i, ti in enumerate(t) if ti is not None and ti <= j]) for j in range(len(L))]


def forgetting_per_domain(L: Matrix, t: Sequence[int | None]) -> list[float | None]:
    """F_i = L[T][i] - min_{t(i) <= j < T} L[j][i] for t(i) < T, else None. Positive = forgot."""
    T = len(L) - 1
    return [None if b is None else float(L[T][i] - b) for i, b in enumerate(_best_before_last(L, t))]


def _best_before_last(L: Matrix, t: Sequence[int | None]) -> list[float | None]:
    """min_{t(i) <= j < T} L[j][i] for t(i) < T, else None: the window both F_i and D_i measure from."""
    T = len(L) - 1
    return [None if ti is None or ti >= T else min(L[j][i] for j in range(ti, T)) for i, ti in enumerate(t)]


def average_forgetting(L: Matrix, t: Sequence[int | None]) -> float | None:
    return _mean([f for f in forgetting_per_domain(L, t) if f is not None])


def backward_transfer(L: Matrix, t: Sequence[int | None]) -> float | None:
    """BWT = mean_{t(i) < T} (L[t(i)][i] - L[T][i]). Negative = forgot."""
    T = len(L) - 1
    return _mean([float(L[ti][i] - L[T][i]) for i, ti in enumerate(t) if ti is not None and ti < T])


def backward_transfer_last(L: Matrix, s: Sequence[int | None]) -> float | None:
    """bwt_last = mean_{s(i) < T} (L[s(i)][i] - L[T][i]), s(i) the last phase that trained i. Negative = forgot.

    Unlike BWT it does not count re-training a recurring domain as backward transfer.
    """
    return backward_transfer(L, s)


def learned_drop(L: Matrix, t: Sequence[int | None]) -> list[float | None]:
    """D_i = L[t(i)-1][i] - min_{t(i) <= j < T} L[j][i] for t(i) < T, else None. Positive = learned.

    The loss just before the domain was first trained minus its best loss before the last phase: the
    same window F_i takes its minimum over, so F_i / D_i is the fraction of what was learned that was lost.
    """
    return [None if b is None or ti is None else float(L[ti - 1][i] - b)
            for i, (ti, b) in enumerate(zip(t, _best_before_last(L, t), strict=True))]


def normalised_forgetting(L: Matrix, t: Sequence[int | None]) -> list[float | None]:
    """F_i / D_i where D_i > 0, else None. Positive = forgot; 1 = back to the loss before learning."""
    return [None if f is None or d is None or d <= 0 else f / d
            for f, d in zip(forgetting_per_domain(L, t), learned_drop(L, t), strict=True)]


def average_normalised_forgetting(L: Matrix, t: Sequence[int | None]) -> float | None:
    """Mean of F_i / D_i over the domains where it is defined (D_i > 0); None if there are none."""
    return _mean([x for x in normalised_forgetting(L, t) if x is not None])


def forward_transfer(L: Matrix, t: Sequence[int | None]) -> float | None:
    """FWT = mean_{t(i) > 1} (L[0][i] - L[t(i)-1][i]). Positive = earlier phases helped."""
    return _mean([float(L[0][i] - L[ti - 1][i]) for i, ti in enumerate(t) if ti is not None and ti > 1])


def _neg(M: Matrix) -> list[list[float]]:
    return [[-x for x in row] for row in M]


def accuracy_forgetting_per_domain(A: Matrix, t: Sequence[int | None]) -> list[float | None]:
    """F_i = max_{t(i) <= j < T} a[j][i] - a[T][i]. Positive = forgot."""
    return forgetting_per_domain(_neg(A), t)


def accuracy_average_forgetting(A: Matrix, t: Sequence[int | None]) -> float | None:
    return average_forgetting(_neg(A), t)


def accuracy_backward_transfer(A: Matrix, t: Sequence[int | None]) -> float | None:
    """BWT_acc = mean_{t(i) < T} (a[T][i] - a[t(i)][i]). Negative = forgot."""
    return backward_transfer(_neg(A), t)


def accuracy_forward_transfer(A: Matrix, t: Sequence[int | None]) -> float | None:
    """FWT_acc = mean_{t(i) > 1} (a[t(i)-1][i] - a[0][i]). Positive = earlier phases helped."""
    return forward_transfer(_neg(A), t)


def accuracy_learned_drop(A: Matrix, t: Sequence[int | None]) -> list[float | None]:
    """D_acc_i = max_{t(i) <= j < T} a[j][i] - a[t(i)-1][i]. Positive = learned."""
    return learned_drop(_neg(A), t)


def accuracy_normalised_forgetting(A: Matrix, t: Sequence[int | None]) -> list[float | None]:
    """F_acc_i / D_acc_i where D_acc_i > 0. Positive = forgot."""
    return normalised_forgetting(_neg(A), t)


def accuracy_backward_transfer_last(A: Matrix, s: Sequence[int | None]) -> float | None:
    """bwt_last_acc = mean_{s(i) < T} (a[T][i] - a[s(i)][i]). Negative = forgot."""
    return backward_transfer(_neg(A), s)


def learning_speed(steps: Sequence[int], losses: Sequence[float]) -> dict[str, float | None]:
    """Speed of learning one domain from its loss curve during the phase that first trains it.

    ``steps`` are steps since the phase began, starting with 0 (the loss when the phase starts) and
    ending with the phase's last step. Returns
    - ``auc``: trapezoidal area under the loss curve divided by the phase's steps (mean loss; lower = faster);
    - ``steps_to_90``: first evaluated step at which 90% of the phase's total loss drop is reached
      (None if the loss did not drop).
    """
    s = np.asarray(steps, dtype=float)
    y = np.asarray(losses, dtype=float)
    if len(s) < 2 or s[-1] <= s[0]:
        return {"auc": None, "steps_to_90": None}
    auc = float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(s)) / (s[-1] - s[0]))
    drop = y[0] - y[-1]
    if drop <= 0:
        return {"auc": auc, "steps_to_90": None}
    reached = np.nonzero(y[0] - y >= 0.9 * drop)[0]
    return {"auc": auc, "steps_to_90": int(s[reached[0]] - s[0])}
