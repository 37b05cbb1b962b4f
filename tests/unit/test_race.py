"""The race between plans: successive halving on synthetic learning curves, the paired test on
known answers, ties to the cheaper plan (pure, no training), and the winner continued rather
than restarted (a tiny test_resnet run)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlcli.recommend.race import (
    Plan,
    candidate_plans,
    choose_plan,
    compare,
    discordant,
    mcnemar_exact,
    paired_bootstrap,
    race_cost,
    run_race,
    rung_epochs,
    survivors_per_rung,
)

# Hand values: p = 2 * sum_{i <= min(b, c)} C(b + c, i) / 2^(b + c), capped at 1.
MCNEMAR_CASES = [
    (0, 0, 1.0),
    (0, 5, 2 / 32),  # 0.0625: five discordant pairs all one way is not yet significant
    (0, 6, 2 / 64),  # 0.03125: six is
    (1, 9, 22 / 1024),
    (2, 10, 2 * (1 + 12 + 66) / 4096),
    (3, 3, 1.0),
    (10, 2, 2 * (1 + 12 + 66) / 4096),  # symmetric
]


@pytest.mark.parametrize(("b", "c", "expected"), MCNEMAR_CASES)
def test_mcnemar_exact_matches_hand_values(b: int, c: int, expected: float) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_refuses_negative_counts() -> None:
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_discordant_counts_each_side() -> None:
    a = [True, True, False, False, True]
    b = [True, False, True, False, False]
    assert discordant(a, b) == (2, 1)


def test_bootstrap_one_plan_right_on_30_more_images() -> None:
    # 200 val images: both right on 150, only A right on 30, both wrong on 20.
    a = [True] * 180 + [False] * 20
    b = [True] * 150 + [False] * 50
    diff, low, high = paired_bootstrap(a, b)
    assert diff == pytest.approx(30 / 200)
    assert 0 < low < diff < high  # the interval excludes 0: a real difference
    result = compare("A", "B", a, b)
    assert (result.only_best, result.only_other) == (30, 0)
    assert result.p_value == pytest.approx(2 / 2**30)
    assert not result.tie


def test_bootstrap_interval_spans_zero_on_a_noise_sized_difference() -> None:
    # 153 images (hymenoptera's val): 3 only-A against 1 only-B, two images of difference.
    a = [True] * 140 + [True, True, True, False] + [False] * 9
    b = [True] * 140 + [False, False, False, True] + [False] * 9
    diff, low, high = paired_bootstrap(a, b)
    assert diff == pytest.approx(2 / 153)
    assert low <= 0 <= high
    result = compare("A", "B", a, b)
    assert result.p_value == pytest.approx(2 * (1 + 4) / 16)
    assert result.tie


RUNG_CASES = [
    (10, [1, 2, 4, 8]),
    (5, [1, 2, 4]),
    (2, [1]),
    (1, [1]),
]


@pytest.mark.parametrize(("final", "expected"), RUNG_CASES)
def test_rung_epochs(final: int, expected: list[int]) -> None:
    assert rung_epochs(final) == expected


@pytest.mark.parametrize(
    ("plans", "rungs", "expected"),
    [
        (4, 3, [4, 2]),
        (5, 3, [5, 3, 2]),
        (2, 4, [2]),
        (1, 3, [1]),
        (8, 2, [8, 4]),
        (8, 9, [8, 4, 2]),
    ],
)
def test_survivors_per_rung(plans: int, rungs: int, expected: list[int]) -> None:
    assert survivors_per_rung(plans, rungs) == expected


@given(st.integers(1, 40), st.integers(1, 8), st.integers(2, 4))
def test_halving_schedule_properties(num_plans: int, num_rungs: int, eta: int) -> None:
    counts = survivors_per_rung(num_plans, num_rungs, eta)
    assert counts[0] == num_plans  # every plan gets the first rung
    assert len(counts) <= num_rungs
    for before, after in zip(counts, counts[1:], strict=False):
        assert after == math.ceil(before / eta) and 2 <= after < before
    if len(counts) < num_rungs and num_plans > 1:
        assert math.ceil(counts[-1] / eta) < 2  # stopped only when one would be left


def plan(name: str, cost: float, prior: int = 0) -> Plan:
    strategy = "head-only" if name == "head-only" else ("full" if name == "full" else "partial")
    k = 0 if strategy == "head-only" else int(name.split("-")[-1]) if "-" in name else 9
    return Plan(name, strategy, k, cost, prior)


PLANS = [
    plan("head-only", 1.0),
    plan("partial-1", 1.4),
    plan("partial-2", 1.8),
    plan("partial-4", 2.4),
    plan("full", 3.0),
]
N_VAL = 200


def curves(table: dict[str, dict[int, int]]):
    """A train callback from synthetic learning curves: plan -> {epochs: images right}.
    Images 0..right-1 are right (so the better plan is right on a superset), the rest wrong.
    Records each call, to check what was trained."""
    calls: list[tuple[str, int]] = []

    def train(p: Plan, epochs: int) -> list[int]:
        calls.append((p.name, epochs))
        right = table[p.name][epochs]
        return [0] * right + [1] * (N_VAL - right)

    return train, calls


LABELS = [0] * N_VAL


def test_successive_halving_prunes_to_the_best_half_each_rung() -> None:
    table = {
        "head-only": {0: 150},
        "partial-1": {1: 160, 2: 162},
        "partial-2": {1: 165, 2: 190},
        "partial-4": {1: 150, 2: 170},
        "full": {1: 164, 2: 175},
    }
    train, calls = curves(table)
    result = run_race(PLANS, LABELS, 5, train)
    assert result.rungs == [1, 2, 4]
    # rung 1: all four epoch plans; rung 2: the best two (partial-2 165, full 164).
    assert calls == [
        ("head-only", 0),
        ("partial-1", 1),
        ("partial-2", 1),
        ("partial-4", 1),
        ("full", 1),
        ("partial-2", 2),
        ("full", 2),
    ]
    assert result.winner == "partial-2" and result.best == "partial-2"
    assert result.epochs_trained == {
        "head-only": 0,
        "partial-1": 1,
        "partial-2": 2,
        "partial-4": 1,
        "full": 2,
    }
    assert not result.notes


def test_a_difference_within_noise_goes_to_the_cheaper_plan() -> None:
    # full is right on 2 more of 200 images than head-only: McNemar p = 0.5, a tie.
    table = {
        "head-only": {0: 180},
        "partial-1": {1: 170},
        "partial-2": {1: 175},
        "partial-4": {1: 178},
        "full": {1: 181, 2: 182},
    }
    table["partial-4"][2] = 179
    train, _ = curves(table)
    result = run_race(PLANS, LABELS, 5, train)
    assert result.best == "full"
    assert result.winner == "head-only"
    assert len(result.notes) == 1 and result.notes[0].startswith("tie -> cheaper: full")
    tie = next(c for c in result.comparisons if c.other == "head-only")
    assert (tie.only_best, tie.only_other) == (2, 0) and tie.tie


def test_a_clear_difference_is_not_a_tie() -> None:
    table = {
        "head-only": {0: 150},
        "partial-1": {1: 150},
        "partial-2": {1: 150},
        "partial-4": {1: 160, 2: 185},
        "full": {1: 158, 2: 170},
    }
    train, _ = curves(table)
    result = run_race(PLANS, LABELS, 5, train)
    assert result.winner == "partial-4"
    assert all(not c.tie for c in result.comparisons)


def test_equal_accuracy_ranks_the_cheaper_plan_first() -> None:
    acc = {name: [True] * 10 for name in ("partial-1", "partial-2", "full")}
    winner, best, _, notes = choose_plan(PLANS[1:3] + PLANS[4:], acc, 5)
    assert best == winner == "partial-1" and not notes


def test_race_cost_counts_each_rung_once() -> None:
    # Rungs 1, 2, 4 with 4 epoch plans: all four 1 epoch, then the two dearest 1 more.
    cost = race_cost(PLANS, [1, 2, 4])
    assert cost == pytest.approx(1.0 + (1.4 + 1.8 + 2.4 + 3.0) + (3.0 + 2.4))


def test_candidate_plans_from_the_stages() -> None:
    names = ("stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "blocks.5")
    fractions = [0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1]
    plans = candidate_plans(names, fractions, ("partial", 2), earlier_stage_k=3, earlier_stage="b3")
    assert [p.name for p in plans] == [
        "head-only",
        "partial-1",
        "partial-2",
        "partial-after-b3",
        "partial-4",
        "full",
    ]
    costs = [p.epoch_cost for p in plans]
    assert costs == sorted(costs) and costs[0] == 1.0 and costs[-1] == pytest.approx(3.0)
    assert [p.prior for p in plans] == [2, 1, 0, 1, 2, 5]
    # An earlier-stage K that is already raced adds no plan; 4 stages drop partial-4.
    assert len(candidate_plans(names, fractions, ("head-only", 0), 2, "b4")) == 5
    small = candidate_plans(names[:4], fractions[:4], ("full", 4))
    assert [p.name for p in small] == ["head-only", "partial-1", "partial-2", "full"]


def test_wrong_number_of_predictions_is_a_bug() -> None:
    with pytest.raises(ValueError):
        run_race(PLANS[:2], LABELS, 5, lambda p, e: [0])
