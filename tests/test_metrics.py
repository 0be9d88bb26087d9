"""CL metrics on hand-computed matrices, signs included (DESIGN §5)."""

import math

import pytest

from sparsecl.metrics import cl

# 3 domains, trained in phases 1, 2, 3. Rows: init, after phase 1, 2, 3.
L = [
    [5.0, 5.0, 5.0],
    [2.0, 4.0, 4.5],
    [3.0, 1.5, 4.0],
    [3.5, 2.5, 1.0],
]
T_FIRST = [1, 2, 3]


def test_first_trained_handles_mixtures_and_untrained() -> None:
    assert cl.first_trained([["a"], ["b", "a"], ["c"]], ["a", "b", "c", "d"]) == [1, 2, 3, None]


def test_average_seen_loss() -> None:
    A = cl.average_seen_loss(L, T_FIRST)
    assert A[0] is None
    assert A[1] == pytest.approx(2.0)
    assert A[2] == pytest.approx((3.0 + 1.5) / 2)
    assert A[3] == pytest.approx((3.5 + 2.5 + 1.0) / 3)


def test_forgetting_is_positive_when_loss_rises() -> None:
    # domain 0: final 3.5, best over phases 1..2 = 2.0 -> +1.5; domain 1: final 2.5, best over phase 2 = 1.5 -> +1.0
    assert cl.forgetting_per_domain(L, T_FIRST) == [pytest.approx(1.5), pytest.approx(1.0), None]
    assert cl.average_forgetting(L, T_FIRST) == pytest.approx(1.25)


def test_forgetting_is_max_based_not_last_phase() -> None:
    # best loss of domain 0 was at phase 1 (2.0), not phase 2 (3.0): F uses the minimum
    L2 = [[5.0, 5.0], [2.0, 4.0], [3.0, 1.0]]
    assert cl.forgetting_per_domain(L2, [1, 2]) == [pytest.approx(1.0), None]


def test_forgetting_negative_when_domain_keeps_improving() -> None:
    L3 = [[5.0, 5.0], [3.0, 4.0], [2.5, 1.0]]
    assert cl.average_forgetting(L3, [1, 2]) == pytest.approx(-0.5)


def test_backward_transfer_negative_means_forgetting() -> None:
    # (L[1][0] - L[3][0]) = 2.0 - 3.5 = -1.5; (L[2][1] - L[3][1]) = 1.5 - 2.5 = -1.0
    assert cl.backward_transfer(L, T_FIRST) == pytest.approx(-1.25)


def test_forward_transfer_positive_means_earlier_phases_helped() -> None:
    # domain 1: L[0][1] - L[1][1] = 5 - 4 = 1; domain 2: L[0][2] - L[2][2] = 5 - 4 = 1
    assert cl.forward_transfer(L, T_FIRST) == pytest.approx(1.0)


def test_untrained_domains_are_excluded() -> None:
    Lx = [[5.0, 5.0], [2.0, 4.0], [3.0, 3.0]]
    t = [1, None]
    assert cl.average_forgetting(Lx, t) == pytest.approx(1.0)
    assert cl.backward_transfer(Lx, t) == pytest.approx(-1.0)
    assert cl.forward_transfer(Lx, t) is None
    assert cl.average_seen_loss(Lx, t) == [None, 2.0, 3.0]


def test_accuracy_form_keeps_sign_meaning() -> None:
    acc = [[0.0, 0.0, 0.0], [0.8, 0.1, 0.0], [0.6, 0.9, 0.1], [0.5, 0.7, 0.95]]
    # forgetting: domain 0: max(0.8, 0.6) - 0.5 = 0.3; domain 1: 0.9 - 0.7 = 0.2
    assert cl.accuracy_forgetting_per_domain(acc, T_FIRST) == [pytest.approx(0.3), pytest.approx(0.2), None]
    assert cl.accuracy_average_forgetting(acc, T_FIRST) == pytest.approx(0.25)
    # BWT: (0.5 - 0.8 + 0.7 - 0.9) / 2 = -0.25 (negative = forgot)
    assert cl.accuracy_backward_transfer(acc, T_FIRST) == pytest.approx(-0.25)
    # FWT: (0.1 - 0) + (0.1 - 0) over domains 1, 2 = 0.1 (positive = helped)
    assert cl.accuracy_forward_transfer(acc, T_FIRST) == pytest.approx(0.1)


def test_learning_speed_auc_and_steps_to_90() -> None:
    steps = [0, 10, 20, 30, 40]
    loss = [5.0, 3.0, 2.0, 1.2, 1.0]
    r = cl.learning_speed(steps, loss)
    # trapezoids: (8 + 5 + 3.2 + 2.2) * 10 / 2 = 92; / 40 steps = 2.3
    assert r["auc"] == pytest.approx(2.3)
    # total drop 4.0; 90% = 3.6 -> first loss <= 1.4 is at step 30
    assert r["steps_to_90"] == 30


def test_learning_speed_without_drop() -> None:
    r = cl.learning_speed([0, 5], [2.0, 2.5])
    assert r["auc"] == pytest.approx(2.25)
    assert r["steps_to_90"] is None
    assert math.isfinite(r["auc"])


def test_learned_drop_and_normalised_forgetting() -> None:
    # D_0 = L[0][0] - min(L[1][0], L[2][0]) = 5 - 2 = 3; D_1 = L[1][1] - min(L[2][1]) = 4 - 1.5 = 2.5
    assert cl.learned_drop(L, T_FIRST) == [pytest.approx(3.0), pytest.approx(2.5), None]
    # F = [1.5, 1.0] -> F/D = [0.5, 0.4], mean 0.45 (positive = forgot)
    assert cl.normalised_forgetting(L, T_FIRST) == [pytest.approx(0.5), pytest.approx(0.4), None]
    assert cl.average_normalised_forgetting(L, T_FIRST) == pytest.approx(0.45)


def test_normalised_forgetting_skips_domains_that_learned_nothing() -> None:
    # domain 0's loss rose while it was trained (D = 5 - 5.2 = -0.2); domain 1 learned exactly nothing (D = 0)
    Ln = [[5.0, 4.0, 5.0], [5.2, 4.0, 3.0], [5.5, 4.0, 2.0], [6.0, 4.5, 2.5]]
    assert cl.learned_drop(Ln, [1, 1, 1]) == [pytest.approx(-0.2), pytest.approx(0.0), pytest.approx(3.0)]
    # domain 2: F = 2.5 - 2.0 = 0.5, D = 5 - 2 = 3 -> 1/6; the others have no ratio
    assert cl.normalised_forgetting(Ln, [1, 1, 1]) == [None, None, pytest.approx(0.5 / 3.0)]
    assert cl.average_normalised_forgetting(Ln, [1, 1, 1]) == pytest.approx(0.5 / 3.0)
    assert cl.average_normalised_forgetting([[5.0], [5.5], [6.0]], [1]) is None  # D < 0: nothing to normalise


def test_bwt_last_measures_from_the_last_training_of_a_recurring_domain() -> None:
    phases = [["a"], ["b"], ["a"], ["b"]]
    t, s = cl.first_trained(phases, ["a", "b"]), cl.last_trained(phases, ["a", "b"])
    assert t == [1, 2] and s == [3, 4]
    Lr = [[5.0, 5.0], [2.0, 4.5], [3.0, 2.0], [1.5, 3.0], [2.5, 1.8]]
    # first-phase (GEM) form: a: L[1][0] - L[4][0] = -0.5, b: L[2][1] - L[4][1] = +0.2 -> -0.15
    assert cl.backward_transfer(Lr, t) == pytest.approx(-0.15)
    # last-phase form: a: L[3][0] - L[4][0] = -1.0; b was trained in the last phase (s = T): excluded
    assert cl.backward_transfer_last(Lr, s) == pytest.approx(-1.0)
    assert cl.last_trained(phases, ["c"]) == [None]


def test_bwt_last_equals_bwt_without_recurrence() -> None:
    s = cl.last_trained([["a"], ["b"], ["c"]], ["a", "b", "c"])
    assert s == T_FIRST
    assert cl.backward_transfer_last(L, s) == pytest.approx(cl.backward_transfer(L, T_FIRST)) == pytest.approx(-1.25)


def test_accuracy_form_of_learned_drop_and_bwt_last() -> None:
    acc = [[0.0, 0.0, 0.0], [0.8, 0.1, 0.0], [0.6, 0.9, 0.1], [0.5, 0.7, 0.95]]
    # D_acc: domain 0: max(0.8, 0.6) - 0.0 = 0.8; domain 1: 0.9 - 0.1 = 0.8 (positive = learned)
    assert cl.accuracy_learned_drop(acc, T_FIRST) == [pytest.approx(0.8), pytest.approx(0.8), None]
    # F_acc = [0.3, 0.2] -> [0.375, 0.25]
    assert cl.accuracy_normalised_forgetting(acc, T_FIRST) == [pytest.approx(0.375), pytest.approx(0.25), None]
    # no recurrence: bwt_last_acc = BWT_acc = -0.25
    assert cl.accuracy_backward_transfer_last(acc, T_FIRST) == pytest.approx(-0.25)
