"""Opt-in experiment tracking: MLflow or TensorBoard, as one hook object for finetune.

The loop knows nothing of trackers: a tracker is the last of the loop's epoch hooks
(train.loop.EpochHook), and finetune calls the other two; the same for every backend (event
names as a contract, as Ultralytics' callbacks):

    on_run_start(config, plan, run_dir)   the resolved config (as params) and the plan with
                                          its reasons (the recommendation)
    on_epoch_end(state, improved)         every epoch's metrics (the metrics.csv row); never
                                          stops the run
    on_run_end(summary, artifacts)        the RunSummary, curves.png, report.html, best.pt

Used as a context manager: leaving it on an exception ends the run as failed (killed on
Ctrl-C). Under torchrun only rank 0 gets a real tracker. The libraries are optional extras,
imported only when asked for: pip install 'tlcli[mlflow]' or 'tlcli[tensorboard]'.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlcli.errors import ConfigError, Interrupted

if TYPE_CHECKING:
    from tlcli.train.loop import LoopState
    from tlcli.train.summary import RunSummary

# Backend -> (module to import, the extra that installs it).
BACKENDS = {"mlflow": ("mlflow", "mlflow"), "tensorboard": ("tensorboard", "tensorboard")}
# MLflow 3's own default is sqlite:///mlflow.db, which needs SQLAlchemy (not in
# mlflow-skinny); a ./mlruns file store works embedded with the skinny package alone.
MLFLOW_DEFAULT_STORE = "mlruns"
TENSORBOARD_DIR = "tensorboard"  # under the run dir, unless --tracking-uri names a folder
# MLflow limits: 100 params per log_batch call, 6000 characters per param value.
MLFLOW_BATCH = 100
MLFLOW_PARAM_CHARS = 6000
METRIC_KEYS_SKIPPED = ("epoch",)  # the step, not a metric


@dataclass(frozen=True)
class Tracking:
    """What the user asked for: --track BACKEND [--tracking-uri URI]."""

    backend: str
    uri: str | None = None


def require_backend(tracking: Tracking | None) -> None:
    """Fail before any work when the backend is unknown or its library is not installed."""
    if tracking is None:
        return
    if tracking.backend not in BACKENDS:
        raise ConfigError(f"--track {tracking.backend!r}: expected one of {', '.join(BACKENDS)}")
    module, extra = BACKENDS[tracking.backend]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"--track {tracking.backend} needs the {module} package; pip install 'tlcli[{extra}]'"
        )


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 0.001}} -> {'optim.lr': 0.001}: one param per setting."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def epoch_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """The numeric metrics of a history row (None: not measured that epoch)."""
    return {
        k: float(v)
        for k, v in row.items()
        if k not in METRIC_KEYS_SKIPPED and isinstance(v, int | float) and not isinstance(v, bool)
    }


def recommendation_text(plan: Mapping[str, Any]) -> str:
    """The plan and its reasons as Markdown (MLflow's run description, a TensorBoard text)."""
    strategy = plan["strategy"]
    if strategy == "partial":
        strategy += f" (last {plan['trainable_stages']} stages + head)"
    lines = [f"**strategy: {strategy}**", ""]
    reasons = plan.get("reasons") or []
    lines += [f"- {r}" for r in reasons] or ["- chosen on the command line or in the config"]
    return "\n".join(lines)


class Tracker:
    """No tracking: the hooks do nothing. Backends override them."""

    def __init__(self) -> None:
        self.logged_epochs: set[int] = set()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is not None:
            stopped = issubclass(kind, KeyboardInterrupt | Interrupted)  # Ctrl-C, SIGTERM
            self.close("KILLED" if stopped else "FAILED")

    def on_run_start(self, config: Mapping[str, Any], plan: Mapping[str, Any], run_dir: Path):
        pass

    def on_epoch_end(self, state: LoopState, improved: bool) -> None:
        self.log_row(state.history[-1])

    def log_row(self, row: Mapping[str, Any]) -> None:
        epoch = int(row["epoch"])
        if epoch not in self.logged_epochs:
            self.logged_epochs.add(epoch)
            self.log_epoch(epoch, epoch_metrics(row))

    def on_run_end(self, summary: RunSummary, artifacts: Mapping[str, Path]) -> None:
        # Epochs not seen live (the one-pass L-BFGS head, epochs before a --resume) go now.
        for row in summary.history:
            self.log_row(row)
        self.finish(summary, artifacts)
        self.close("FINISHED")

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def finish(self, summary: RunSummary, artifacts: Mapping[str, Path]) -> None:
        pass

    def close(self, status: str) -> None:
        pass


def result_metrics(summary: RunSummary) -> dict[str, float]:
    keys = ("val_acc", "best_epoch", "epochs_run", "seconds", "probe_val_acc", "gain_over_probe")
    values = {k: getattr(summary, k) for k in keys}
    return {f"final/{k}": float(v) for k, v in values.items() if v is not None}


class MlflowTracker(Tracker):
    """One MLflow run per finetune run, in the experiment named after the data folder."""

    def __init__(self, uri: str | None):
        super().__init__()
        from mlflow.tracking import MlflowClient

        if uri is None:
            uri = Path(MLFLOW_DEFAULT_STORE).resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:
            # Set explicitly, so MLflow 3 keeps the file store instead of refusing it.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id: str | None = None

    def on_run_start(self, config, plan, run_dir):
        data = Path(str(plan.get("data_dir") or "tlcli")).name
        experiment = self.client.get_experiment_by_name(data)
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(data)
        )
        run = self.client.create_run(
            experiment_id,
            run_name=Path(run_dir).name,
            tags={
                "tlcli.run_dir": str(Path(run_dir).resolve()),
                "tlcli.strategy": plan["strategy"],
                "mlflow.note.content": recommendation_text(plan),
            },
        )
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [
            Param(k, json.dumps(v) if not isinstance(v, str) else v)
            for k, v in flatten(config).items()
        ]
        params = [Param(p.key, p.value[:MLFLOW_PARAM_CHARS]) for p in params]
        for i in range(0, len(params), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=params[i : i + MLFLOW_BATCH])
        self.client.log_dict(self.run_id, dict(plan), "recommendation.json")

    def log_epoch(self, epoch, metrics):
        import time

        from mlflow.entities import Metric

        if self.run_id is None:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, epoch) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def finish(self, summary, artifacts):
        if self.run_id is None:
            return
        for k, v in result_metrics(summary).items():
            self.client.log_metric(self.run_id, k, v)
        best = artifacts.get("best")
        if best is not None:
            self.client.set_tag(self.run_id, "tlcli.best_checkpoint", str(Path(best).resolve()))
        for key in ("curves", "report"):
            path = artifacts.get(key)
            if path is not None and Path(path).is_file():
                self.client.log_artifact(self.run_id, str(path))

    def close(self, status):
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)
            self.run_id = None


class TensorBoardTracker(Tracker):
    """Scalars per epoch, the config as HParams and text, the curves as an image."""

    def __init__(self, uri: str | None):
        super().__init__()
        self.root = uri
        self.writer: Any = None
        self.config: dict[str, Any] = {}

    def on_run_start(self, config, plan, run_dir):
        from torch.utils.tensorboard import SummaryWriter

        run_dir = Path(run_dir)
        log_dir = run_dir / TENSORBOARD_DIR if self.root is None else Path(self.root) / run_dir.name
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.config = {
            k: v if isinstance(v, int | float | str | bool) else str(v)
            for k, v in flatten(config).items()
        }
        table = "\n".join(f"| {k} | {v} |" for k, v in self.config.items())
        self.writer.add_text("config", "| setting | value |\n|---|---|\n" + table, 0)
        self.writer.add_text("recommendation", recommendation_text(plan), 0)

    def log_epoch(self, epoch, metrics):
        if self.writer is None:
            return
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def finish(self, summary, artifacts):
        if self.writer is None:
            return
        import numpy as np
        from PIL import Image
        from torch.utils.tensorboard.summary import hparams

        # HParams in this run's own folder (SummaryWriter.add_hparams makes a sub-run).
        final = result_metrics(summary)
        for summary_proto in hparams(self.config, final):
            self.writer.file_writer.add_summary(summary_proto)
        for key, value in final.items():
            self.writer.add_scalar(key, value, summary.epochs_run)
        curves = artifacts.get("curves")
        if curves is not None and Path(curves).is_file():
            with Image.open(curves) as img:
                pixels = np.asarray(img.convert("RGB"))
            self.writer.add_image("curves", pixels, 0, dataformats="HWC")
        paths = "\n".join(f"- {k}: `{v}`" for k, v in artifacts.items())
        self.writer.add_text("artifacts", paths, 0)

    def close(self, status):
        if self.writer is not None:
            self.writer.add_text("status", status, 0)
            self.writer.close()
            self.writer = None


def open_tracker(tracking: Tracking | None, is_main: bool = True) -> Tracker:
    """The tracker for this process: a real one on rank 0 when asked for, else no-ops."""
    if tracking is None or not is_main:
        return Tracker()
    require_backend(tracking)
    if tracking.backend == "mlflow":
        return MlflowTracker(tracking.uri)
    return TensorBoardTracker(tracking.uri)
