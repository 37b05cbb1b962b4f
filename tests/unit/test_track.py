"""--track mlflow|tensorboard, read back through the real libraries: MLflow's client and
TensorBoard's event reader."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
from corpus import make_image_folder
from typer.testing import CliRunner

from tlcli.cli import app
from tlcli.errors import EXIT_CONFIG, Interrupted
from tlcli.track import Tracker, Tracking, flatten, open_tracker
from tlcli.train.loop import LoopState
from tlcli.train.summary import RunSummary

runner = CliRunner()
TINY_RUN = [
    "--model", "test_resnet", "--no-pretrained", "--strategy", "full", "--epochs", "2",
    "--image-size", "64", "--batch-size", "8", "--workers", "1", "--device", "cpu",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "colours", {"red": 8, "blue": 8})


def finetune(data: Path, out: Path, *args: str) -> dict:
    command = ["finetune", str(data), "--out", str(out), *TINY_RUN, *args]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())  # with the history


def test_mlflow_run_reads_back_with_every_epoch_params_plan_and_artifacts(
    data, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # the default store is ./mlruns
    summary = finetune(data, tmp_path / "run", "--track", "mlflow")
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("colours")  # named after the data folder
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    history = client.get_metric_history(run.info.run_id, "val_acc")
    # every epoch once, LP-FT's probe (epoch 0) included; the probe is logged when the run ends
    assert sorted((m.step, m.value) for m in history) == [
        (row["epoch"], row["val_acc"]) for row in summary["history"]
    ]
    assert len(history) == len(summary["history"]) >= 2
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == len(history)
    assert run.data.metrics["final/val_acc"] == summary["val_acc"]
    params = run.data.params
    assert params["model.name"] == "test_resnet" and params["strategy.name"] == "full"
    assert float(params["optim.lr"]) == 1e-3 and params["train.epochs"] == "2"
    assert "strategy: full" in run.data.tags["mlflow.note.content"]
    assert run.data.tags["tlcli.best_checkpoint"] == str((tmp_path / "run" / "best.pt").resolve())
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "report.html", "recommendation.json"} <= artifacts


def test_tensorboard_events_read_back_with_every_epoch_and_the_config(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = finetune(data, tmp_path / "run", "--track", "tensorboard")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    scalars = events.Scalars("val_acc")
    assert [(step, pytest.approx(v)) for step, v in sorted((s.step, s.value) for s in scalars)] == [
        (row["epoch"], row["val_acc"]) for row in summary["history"]
    ]
    assert len(events.Scalars("train_loss")) == len(summary["history"]) >= 2
    tags = events.Tags()
    assert "curves" in tags["images"]
    assert {"config/text_summary", "recommendation/text_summary"} <= set(tags["tensors"])
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| model.name | test_resnet |" in config


def test_a_missing_library_is_one_line_naming_the_extra_before_any_work(
    data, tmp_path, monkeypatch
):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    out = tmp_path / "run"
    result = runner.invoke(app, ["finetune", str(data), *TINY_RUN, "--out", str(out),
                                 "--track", "mlflow"])  # fmt: skip
    assert result.exit_code == EXIT_CONFIG
    assert "pip install 'tlcli[mlflow]'" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()
    lone_uri = runner.invoke(app, ["finetune", str(data), "--tracking-uri", "x"])
    assert lone_uri.exit_code == EXIT_CONFIG and "--track" in lone_uri.output


class Recording(Tracker):
    def __init__(self):
        super().__init__()
        self.epochs, self.closed = [], []

    def log_epoch(self, epoch, metrics):
        self.epochs.append((epoch, metrics))

    def close(self, status):
        self.closed.append(status)


def test_hooks_log_each_epoch_once_and_a_failed_run_ends_failed():
    tracker = Recording()
    row = {"epoch": 1, "val_acc": 0.5, "ema_val_acc": None, "lr": 1e-3}
    assert tracker.on_epoch_end(LoopState(epoch=1, history=[row]), improved=True) is None
    # At the end the history is replayed: epochs seen live are not logged twice, others are
    # (the one-pass L-BFGS head, epochs before a --resume).
    nothing = {f.name: None for f in dataclasses.fields(RunSummary)}
    summary = RunSummary(**{**nothing, "history": [{"epoch": 0, "val_acc": 0.4}, row]})
    tracker.on_run_end(summary, {})
    assert [e for e, _ in tracker.epochs] == [1, 0]
    assert tracker.epochs[0][1] == {"val_acc": 0.5, "lr": 1e-3}  # None: not measured
    assert tracker.closed == ["FINISHED"]
    stops = [(KeyboardInterrupt(), "KILLED"), (Interrupted("x"), "KILLED")]
    for error, status in [*stops, (RuntimeError(), "FAILED")]:
        failing = Recording()
        with pytest.raises(type(error)), failing:
            raise error
        assert failing.closed == [status]


def test_only_rank_zero_gets_a_real_tracker():
    tracking = Tracking("tensorboard")
    assert type(open_tracker(tracking, is_main=False)) is Tracker
    assert type(open_tracker(None)) is Tracker
    assert type(open_tracker(tracking, is_main=True)) is not Tracker
    assert flatten({"optim": {"lr": 0.1, "x": {"y": 1}}}) == {"optim.lr": 0.1, "optim.x.y": 1}
