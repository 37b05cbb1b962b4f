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
    monotone_costs,
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
    costs = {0: 1.0, 1: 1.2, 2: 1.4, 3: 1.6, 4: 1.8, 7: 3.0}
    plans = candidate_plans(names, costs, ("partial", 2), earlier_stage_k=3, earlier_stage="b3")
    assert [p.name for p in plans] == [
        "head-only",
        "partial-1",
        "partial-2",
        "partial-after-b3",
        "partial-4",
        "full",
    ]
    assert [p.epoch_cost for p in plans] == [1.0, 1.2, 1.4, 1.6, 1.8, 3.0]
    assert [p.prior for p in plans] == [2, 1, 0, 1, 2, 5]
    # An earlier-stage K that is already raced adds no plan; 4 stages drop partial-4.
    assert len(candidate_plans(names, costs, ("head-only", 0), 2, "b4")) == 5
    small = candidate_plans(names[:4], {0: 1.0, 1: 1.2, 2: 1.4, 4: 2.0}, ("full", 4))
    assert [p.name for p in small] == ["head-only", "partial-1", "partial-2", "full"]


def test_timed_costs_never_fall_with_more_stages() -> None:
    timed = {0: 0.009, 1: 0.007, 2: 0.005, 4: 0.013, 5: 0.018}
    assert monotone_costs(timed) == {0: 0.009, 1: 0.009, 2: 0.009, 4: 0.013, 5: 0.018}


def test_wrong_number_of_predictions_is_a_bug() -> None:
    with pytest.raises(ValueError):
        run_race(PLANS[:2], LABELS, 5, lambda p, e: [0])


# --- the race for real: tiny random-init test_resnet, generated images -----------------------

TINY = [
    "--model", "test_resnet", "--no-pretrained", "--image-size", "32", "--batch-size", "8",
    "--device", "cpu", "--workers", "1", "--set", "strategy.auto_budget=race",
]  # fmt: skip


def test_finetune_auto_race_continues_the_winner(tmp_path, monkeypatch) -> None:
    """The winner's race run moves into RUN_DIR and is extended: its history keeps the race's
    epochs. Three plans (one rung) keep it short; the winner is set to partial-1, trained 1
    epoch in the race (which plan wins is the pure tests' business)."""
    import json

    from corpus import make_image_folder
    from typer.testing import CliRunner

    from tlcli.cli import app
    from tlcli.recommend import race_runs

    raced = race_runs.candidate_plans
    real_race = race_runs.run_race

    def three_plans(*args, **kwargs):
        return [p for p in raced(*args, **kwargs) if p.name in ("head-only", "partial-1", "full")]

    def partial_1_wins(*args, **kwargs):
        result = real_race(*args, **kwargs)
        result.winner = "partial-1"
        return result

    race_metrics: dict[str, str] = {}  # partial-1's metrics.csv right after its race rung
    real_call = race_runs.RaceRuns.__call__

    def snapshot(self, plan, epochs):
        predicted = real_call(self, plan, epochs)
        if plan.name == "partial-1":
            race_metrics["partial-1"] = (self.run_dir(plan) / "metrics.csv").read_text()
        return predicted

    monkeypatch.setattr(race_runs, "candidate_plans", three_plans)
    monkeypatch.setattr(race_runs, "run_race", partial_1_wins)
    monkeypatch.setattr(race_runs.RaceRuns, "__call__", snapshot)
    data = make_image_folder(tmp_path / "data", {"red": 8, "blue": 8}, side=40)
    out = tmp_path / "run"
    args = ["finetune", str(data), *TINY, "--epochs", "3", "--out", str(out), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    race = summary["race"]
    trained = {p["name"]: p["epochs_trained"] for p in race["plans"]}
    assert trained == {"head-only": 0, "partial-1": 1, "full": 1}
    assert race["winner"] == "partial-1"
    assert (out / "race.json").is_file() and (out / "race" / "full" / "best.pt").is_file()
    assert not (out / "race" / "partial-1").exists()  # its run moved into RUN_DIR
    assert summary["run_dir"] == str(out) and summary["strategy"] == "partial"
    assert summary["trainable_stages"] == 1
    # Continued, not restarted: the probe (epoch 0), the race's epoch 1, then 2 and 3;
    # trained epochs = race epochs + the remaining.
    history = json.loads((out / "summary.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [0, 1, 2, 3]
    assert summary["epochs_run"] == trained["partial-1"] + (3 - trained["partial-1"])
    final = (out / "metrics.csv").read_text().splitlines()
    assert len(final) == 1 + 4
    # The race's rows (header, the probe, epoch 1, with their timings) are the continued
    # run's first rows, byte for byte: a restarted run would have timed them afresh.
    assert final[:3] == race_metrics["partial-1"].splitlines()
    # The race's epoch 1 is the same row in the continued run's history.
    race_rung = next(p for p in race["plans"] if p["name"] == "partial-1")["rungs"][0]
    assert race_rung["epochs"] == 1
    config = (out / "config.yaml").read_text()
    assert "epochs: 3" in config and "wise_ft: true" in config  # the user's settings back


def test_ctrl_c_during_the_race_is_one_line_and_exit_130(tmp_path, monkeypatch) -> None:
    from corpus import make_image_folder
    from typer.testing import CliRunner

    from tlcli.cli import app
    from tlcli.errors import Interrupted
    from tlcli.train import run

    def interrupted(*args, **kwargs):
        raise Interrupted("interrupted; race/head-only/last.pt holds epoch 0: resume with ...")

    monkeypatch.setattr(run, "finetune", interrupted)
    data = make_image_folder(tmp_path / "data", {"red": 4, "blue": 4}, side=40)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["finetune", str(data), *TINY, "--out", str(out)])
    assert result.exit_code == 130
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith("error: interrupted during the race (head-only")
    assert "start again with a new --out" in lines[-1]
    assert not (out / ".tlcli-claim").exists()  # the claim is let go


def test_the_estimate_counts_training_and_val_passes() -> None:
    from tlcli.recommend.race_runs import estimate_note

    plans = [plan("head-only", 0.01), plan("partial-1", 0.03), plan("full", 0.05)]
    note, seconds = estimate_note(plans, 5, num_train=100, num_val=50)
    # rungs 1, 2, 4 with two epoch plans: both train 1 epoch, then the race ends (one would
    # be left). Training: head-only's forward pass and an epoch of each, 100 x (0.01 + 0.03 +
    # 0.05); val passes: 3 (head-only's fit, 2 epochs) x 50 images x the forward cost.
    assert seconds == pytest.approx(100 * (0.01 + 0.03 + 0.05) + 3 * 50 * 0.01)
    assert "3 plans" in note and "1, 2, 4 epoch(s)" in note and "continues to 5" in note
