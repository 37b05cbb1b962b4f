"""The loop's epoch hooks (train.loop.EpochHook): early stopping, the caller's hooks (tune's
pruning), the checkpoint and the tracker, called in that order; a stop decided by one is seen
by the later ones (so last.pt records it) and ends the run after that epoch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest
from corpus import make_image_folder
from test_recipe import TINY as RECIPE_TINY

from tlcli.checkpoint import Checkpoint, load_checkpoint
from tlcli.config import load_config
from tlcli.train.loop import EarlyStopping, LoopState, call_hooks
from tlcli.train.run import finetune
from tlcli.tune.search import OptunaPruning

TINY = [*RECIPE_TINY, "train.epochs=3", "strategy.name=full"]  # later sets win


@dataclass
class StopAt:
    """Stops the run after `epoch`; records what each call saw."""

    epoch: int
    seen: list[tuple[int, bool]] = field(default_factory=list)

    def on_epoch_end(self, state: LoopState, improved: bool) -> str | None:
        self.seen.append((state.epoch, state.stopped_early))
        return f"stop at {state.epoch}" if state.epoch >= self.epoch else None


@pytest.mark.parametrize(
    ("patience", "since_best", "stops"),
    [(0, 10, False), (2, 1, False), (2, 2, True), (1, 1, True), (3, 0, False)],
)
def test_early_stopping_stops_after_patience_epochs_without_a_gain(patience, since_best, stops):
    state = LoopState(epoch=5, best_acc=0.5, best_epoch=2, epochs_since_best=since_best)
    reason = EarlyStopping(patience).on_epoch_end(state, improved=False)
    assert (reason is not None) == stops
    if stops:
        assert reason == f"early stop: no val gain for {patience} epochs (best 0.5000 at epoch 2)"


def test_a_stop_is_seen_by_the_later_hooks_not_the_earlier_ones():
    first, stopper, last = StopAt(99), StopAt(1), StopAt(99)
    state = LoopState(epoch=1)
    assert call_hooks([first, stopper, last], state, improved=True) == ["stop at 1"]
    assert state.stopped_early
    assert first.seen == [(1, False)] and stopper.seen == [(1, False)] and last.seen == [(1, True)]


def test_a_caller_hook_ends_the_run_early_and_last_pt_records_the_stop(tmp_path):
    images = make_image_folder(tmp_path / "data", {"a": 8, "b": 8}, seed=1)
    stopper = StopAt(2)
    summary = finetune(images, load_config(None, TINY), out=tmp_path / "run", hooks=[stopper])
    assert summary["epochs_run"] == 2 and summary["stopped_early"]
    assert [row["epoch"] for row in summary["history"]] == [0, 1, 2]  # epoch 0: the probe
    assert [epoch for epoch, _ in stopper.seen] == [0, 1, 2]  # the probe goes through hooks
    last = Checkpoint.from_payload(load_checkpoint(tmp_path / "run" / "last.pt"))
    assert last.train_state.loop["stopped_early"] and last.train_state.loop["epoch"] == 2


class FakeTrial:
    def __init__(self, prune_from: int):
        self.prune_from, self.reports = prune_from, []

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        return self.reports[-1][0] >= self.prune_from


@pytest.mark.parametrize(
    ("prune_from", "last_step", "pruned_at"),
    [(1, 3, 1), (2, 3, 2), (3, 3, None), (0, 3, 0), (5, 3, None)],
)
def test_pruning_stops_the_run_and_raises_only_after_it(prune_from, last_step, pruned_at):
    trial, history = FakeTrial(prune_from), []
    hook = OptunaPruning(trial, last_step)
    state = LoopState()
    for epoch in range(last_step + 1):
        history.append({"epoch": epoch, "val_acc": 0.1 * epoch, "ema_val_acc": 0.2})
        state = LoopState(epoch=epoch, history=list(history))
        if hook.on_epoch_end(state, improved=True):
            break
    if pruned_at is None:
        hook.check_pruned(state.history)
        assert hook.pruned is None
    else:
        with pytest.raises(optuna.TrialPruned, match=f"pruned after epoch {pruned_at}"):
            hook.check_pruned(state.history)
    # Each epoch's best of raw and EMA, reported once, the replay after the run included.
    steps = [step for step, _ in trial.reports]
    assert steps == sorted(set(steps)) == [row["epoch"] for row in state.history]
    assert trial.reports[-1][1] == max(0.1 * steps[-1], 0.2)


def test_a_head_only_fit_is_reported_to_the_trial_after_the_run(tmp_path: Path):
    """The one-pass L-BFGS head runs no epoch hooks: its row reaches the trial afterwards."""
    trial = FakeTrial(prune_from=99)
    hook = OptunaPruning(trial, last_step=1)
    hook.check_pruned([{"epoch": 1, "val_acc": 0.75, "ema_val_acc": None}])
    assert trial.reports == [(1, 0.75)]
