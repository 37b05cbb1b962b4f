"""`tlcli tune`: coarse-to-fine random search over short finetune runs, with Optuna.

The lecture's recipe: the learning rate first, on a log scale; random search, not a grid;
coarse to fine. A trial is a short `finetune` (the same training code, nothing else). The
first trials are random (coarse), then TPE samples around the best ones (fine), and a
pruner stops trials whose per-epoch val accuracy is behind the others'.

The study lives in an Optuna storage: by default RUN_DIR/study.db (SQLite), so a killed
search resumes with the same command. `--trials N` counts the finished (complete or pruned)
trials of this run dir: rerunning the command only runs the missing ones. Several workers
(processes or machines) share a study through one `--storage`, each with its own `--out`:
each adds its own N trials, and the study, trials.csv and best.yaml hold all of them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tlcli.atomic import holds_files, process_alive, refuse_output_inside, write_text_atomically
from tlcli.choices import PRUNERS
from tlcli.config import Config, apply_overrides, config_from_dict, config_to_dict
from tlcli.data.manifest import is_manifest
from tlcli.errors import ConfigError, Interrupted, RunDirError, TlcliError, TrainingDiverged
from tlcli.interrupt import interrupted_word
from tlcli.progress import NullReporter, Reporter
from tlcli.tune.space import (
    ParamSpec,
    baseline_params,
    load_space,
    resolve_space,
    sample_config,
    space_to_dict,
)

if TYPE_CHECKING:
    from tlcli.train.loop import LoopState

# Coarse trials: with the default 1 warmup epoch, 2 epochs are a warmup and a short cosine
# decay, the shape of the final run in miniature; the median pruner can stop a trial after 1.
DEFAULT_EPOCHS_PER_TRIAL = 2
# Coarse phase: this many random trials (at least MIN_RANDOM_TRIALS) before TPE takes over.
RANDOM_FRACTION = 1 / 3
MIN_RANDOM_TRIALS = 4
# The median pruner compares a trial with the others only once this many have finished.
PRUNER_STARTUP_TRIALS = 3
# Successive halving keeps the best 1/3 at each rung (Optuna's and Hyperband's default).
HALVING_REDUCTION = 3
# A worker's trial whose heartbeat is this old is dead (killed): marked failed, not counted.
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120
# SQLite: wait this long for a lock held by another worker instead of failing at once.
SQLITE_TIMEOUT_SECONDS = 60
# Two workers opening a fresh storage at once can race on creating its tables: retry.
STORAGE_ATTEMPTS = 5
# The centre taken from lr-find is clamped into this range before the LR span is put around it.
LR_CENTER_RANGE = (1e-6, 1.0)
# Settings that may differ between workers of one study without changing the trials.
MACHINE_KEYS = {
    ("train", "device"),
    ("data", "workers"),
    ("data", "cache"),
    ("data", "stream"),
    ("train", "compile"),
}
FINISHED = ("COMPLETE", "PRUNED")


@dataclass(frozen=True)
class TuneSettings:
    trials: int
    epochs_per_trial: int = DEFAULT_EPOCHS_PER_TRIAL
    space_file: Path | None = None
    storage: str | None = None  # default: sqlite:///RUN_DIR/study.db
    study: str | None = None  # default: tune-<data folder name>
    pruner: str = "median"
    lr_find: bool = True  # centre the LR range on the LR range test's suggestion


@dataclass(frozen=True)
class TunePaths:
    root: Path

    @property
    def info(self) -> Path:
        return self.root / "tune.json"

    @property
    def database(self) -> Path:
        return self.root / "study.db"

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def table(self) -> Path:
        return self.root / "trials.csv"

    @property
    def best(self) -> Path:
        return self.root / "best.yaml"

    @property
    def plot(self) -> Path:
        return self.root / "tune.png"


def default_tune_dir(data_dir: Path) -> Path:
    """Fixed (not time-stamped), so that the same command finds the run dir and resumes."""
    return Path("runs") / f"tune-{Path(data_dir).resolve().name}"


def default_study_name(data_dir: Path) -> str:
    return f"tune-{Path(data_dir).resolve().name}"


def refuse_outputs_in_data(out: Path, storage_url: str, data_dir: Path) -> None:
    """Neither the run dir nor a database file may be written under DATA_DIR."""
    refuse_output_inside(out, [data_dir], "the tune run dir")
    if storage_url.startswith("sqlite:///"):  # a database file: an output too
        refuse_output_inside(Path(storage_url.removeprefix("sqlite:///")), [data_dir], "--storage")


def open_tune_dir(out: Path, study: str, storage: str, data_dir: Path) -> tuple[TunePaths, bool]:
    """Create the run dir, or reopen one of the same study (resume); refuse anything else."""
    paths = TunePaths(Path(out))
    if paths.info.is_file():
        info = json.loads(paths.info.read_text())
        if info.get("study") != study or info.get("storage") != storage:
            raise RunDirError(
                f"{out} holds study {info.get('study')!r} in {info.get('storage')}; pass the "
                "same --study/--storage to resume it, or a new --out"
            )
        if info.get("data_dir") != str(Path(data_dir).resolve()):
            raise RunDirError(
                f"{out} tuned on {info.get('data_dir')}; pass that DATA_DIR, or a new --out"
            )
        return paths, True
    if holds_files(paths.root):
        raise RunDirError(f"{out} exists and is not a tune run dir; pass a new --out")
    try:
        paths.trials.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create run dir {out}: {exc.strerror}") from None
    paths.info.write_text(
        json.dumps(
            {
                "study": study,
                "storage": storage,
                "data_dir": str(Path(data_dir).resolve()),
                "created": time.strftime("%FT%T%z"),
            },
            indent=1,
        )
    )
    return paths, False


def mask_storage_url(url: str) -> str:
    """The storage URL with its password as ***: what tune.json, tables and errors show."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy parses: open_storage says so; show no part of it
        return url if "@" not in url else "<storage URL>"


def open_storage(url: str) -> Any:
    import optuna
    import sqlalchemy.exc

    shown = mask_storage_url(url)

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_TIMEOUT_SECONDS}}
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                **{_stale_trial_callback_keyword(): requeue_stale_trial},
                **kwargs,
            )
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as exc:
            if attempt + 1 == STORAGE_ATTEMPTS:
                raise RunDirError(f"cannot open storage {shown}: {exc.orig}") from None
            time.sleep(0.5 * (attempt + 1))
        except sqlalchemy.exc.DatabaseError as exc:  # "file is not a database"
            raise RunDirError(
                f"cannot open storage {shown}: {exc.orig}; point --storage at an Optuna "
                "database, or leave it out for OUT/study.db"
            ) from None
        except (ImportError, ValueError, sqlalchemy.exc.ArgumentError) as exc:
            reason = str(exc).replace(url, shown)
            raise RunDirError(f"cannot open storage {shown}: {reason}; check the URL") from None
    raise AssertionError("unreachable")


def create_study_record(storage: Any, study_name: str) -> bool:
    """Create the study unless it exists; True for the one worker whose call created it
    (the database's unique study name decides, however many workers start at once)."""
    import optuna

    try:
        storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], study_name)
    except optuna.exceptions.DuplicatedStudyError:
        return False
    return True


def create_sampler(trials: int) -> Any:
    """Random for the first third (coarse), then TPE around the best (fine)."""
    import optuna

    return optuna.samplers.TPESampler(
        n_startup_trials=max(MIN_RANDOM_TRIALS, int(trials * RANDOM_FRACTION)),
        multivariate=True,  # the LR and the optimizer interact
        group=True,  # conditional space: head-only trials have no backbone parameters
        constant_liar=True,  # parallel workers do not all sample the same point
    )


def create_pruner(name: str) -> Any:
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(reduction_factor=HALVING_REDUCTION)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {name!r} is not one of: {', '.join(PRUNERS)}")


def study_signature(base: Config, settings: TuneSettings, user_space: dict) -> dict[str, Any]:
    """What must agree between all workers (and runs) of one study."""
    cfg = config_to_dict(base)
    for section, key in MACHINE_KEYS:
        cfg[section].pop(key, None)
    return {
        "config": cfg,
        "space": space_to_dict(user_space),
        "epochs_per_trial": settings.epochs_per_trial,
        "lr_find": settings.lr_find,
    }


def first_difference(saved: Any, given: Any, where: str = "") -> str | None:
    if isinstance(saved, dict) and isinstance(given, dict):
        for key in sorted(set(saved) | set(given), key=str):
            found = first_difference(saved.get(key), given.get(key), f"{where}.{key}".strip("."))
            if found:
                return found
        return None
    return None if saved == given else f"{where}: study has {saved!r}, this command {given!r}"


class TrialReporter:
    """Passes a trial's progress on (OptunaPruning decides; this only reports)."""

    def __init__(self, trial: Any, outer: Reporter):
        self.trial, self.outer = trial, outer
        self.epochs_run = 0
        self.open_tasks: set[str] = set()

    def start(self, task: str, total: int | None, description: str = "") -> None:
        self.open_tasks.add(task)
        self.outer.start(task, total, f"trial {self.trial.number}: {description or task}")

    def advance(self, task: str, amount: int = 1) -> None:
        self.outer.advance(task, amount)

    def finish(self, task: str) -> None:
        self.open_tasks.discard(task)
        self.outer.finish(task)

    def close(self) -> None:
        """Remove the bars of a trial that ended mid-epoch (pruned, diverged)."""
        for task in list(self.open_tasks):
            self.finish(task)

    def note(self, message: str, level: str = "info") -> None:
        if level != "info":  # per-trial info notes (strategy, caches) would drown the table
            self.outer.note(f"trial {self.trial.number}: {message}", level)

    def epoch(self, row: dict[str, Any]) -> None:
        self.outer.epoch(row)
        self.epochs_run = row["epoch"]


@dataclass
class OptunaPruning:
    """The loop's pruning hook (as Optuna's PyTorchLightningPruningCallback): each epoch's
    best val accuracy goes to the trial, and a trial the pruner stops ends its run early;
    check_pruned() then raises TrialPruned, after the run has written its results."""

    trial: Any
    last_step: int  # the trial's last epoch: a finished trial is never pruned
    pruned: str | None = None
    reported: set[int] = field(default_factory=set)

    def report(self, row: dict[str, Any]) -> None:
        if row["epoch"] not in self.reported:
            self.reported.add(row["epoch"])
            self.trial.report(max(row["val_acc"], row.get("ema_val_acc") or -1.0), row["epoch"])

    def on_epoch_end(self, state: LoopState, improved: bool) -> str | None:
        row = state.history[-1]
        self.report(row)
        if row["epoch"] < self.last_step and self.trial.should_prune():
            self.pruned = f"pruned after epoch {row['epoch']}"
        return self.pruned

    def check_pruned(self, history: list[dict[str, Any]]) -> None:
        """After the run: rows no epoch reported (the one-pass L-BFGS head's) go to the
        trial too; a pruned trial raises TrialPruned."""
        import optuna

        for row in history:
            self.report(row)
        if self.pruned:
            raise optuna.TrialPruned(self.pruned)


def _stale_trial_callback_keyword() -> str:
    """Optuna 4.9 renamed RDBStorage's failed_trial_callback (removed in 6.0)."""
    import inspect

    import optuna

    parameters = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    new = "heartbeat_stale_trial_callback"
    return new if new in parameters else "failed_trial_callback"


def requeue_stale_trial(study: Any, trial: Any) -> None:
    """Queue a failed trial's parameters again: its worker stopped (killed, or its machine
    died). Called by Optuna's heartbeat check for any machine, and by fail_dead_trials for
    the killed processes of this host, which it finds at once."""
    note = f"retry of trial {trial.number} (its worker stopped)"
    study.enqueue_trial(dict(trial.params), user_attrs={"note": note})


def fail_dead_trials(study: Any, storage: Any, reporter: Reporter) -> None:
    """Mark FAIL the running trials of killed workers on this host and queue their params
    again. Optuna's heartbeat finds them too, but only after GRACE_SECONDS; a resumed
    command should not show the killed trial as running, nor lose the baseline trial."""
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or not isinstance(pid, int) or process_alive(pid):
            continue
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker resuming at the same time got there first
        requeue_stale_trial(study, t)
        reporter.note(f"trial {t.number} was killed (process {pid} is gone): queued again")


def trial_rows(trials: list[Any]) -> list[dict[str, Any]]:
    """Plain rows for the table, CSV, plot and JSON; pruned trials show their last epoch."""
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        value = t.value
        if value is None and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        duration = t.duration.total_seconds() if t.duration else None
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": value,
                "val_loss": t.user_attrs.get("val_loss"),
                "epochs_run": t.user_attrs.get("epochs_run", max(t.intermediate_values, default=0)),
                "seconds": round(duration, 1) if duration is not None else None,
                "params": dict(t.params),
                "note": t.user_attrs.get("note", ""),
                "worker": t.user_attrs.get("worker", ""),
            }
        )
    return rows


def best_trial(trials: list[Any]) -> Any | None:
    """The complete trial with the highest val accuracy; on a tie the lower val loss, then
    the earliest. Ties are common: on a small val split accuracy moves in steps of 1/N and
    short trials of good configs often land on the same count."""
    done = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]

    def rank(t: Any) -> tuple[float, float, int]:
        return (t.value, -t.user_attrs.get("val_loss", math.inf), -t.number)

    return max(done, key=rank) if done else None


def best_epoch_val_loss(summary: dict[str, Any]) -> float | None:
    """The val loss of the weights a finetune kept (its best epoch, raw or EMA)."""
    history = summary.get("history") or []
    # A weight average kept in best.pt (SWA, WiSE-FT) has its own val loss.
    for average in summary.get("averages") or []:
        if average.get("kept") and average.get("name") == summary.get("best_weights"):
            return average.get("val_loss")
    # By epoch number, not position: an LP-FT history starts with the probe, epoch 0.
    row = next((r for r in history if r.get("epoch") == summary.get("best_epoch")), None)
    if row is None:
        return None
    loss = row.get("ema_val_loss") if summary.get("best_weights") == "ema" else None
    return loss if loss is not None else row.get("val_loss")


def write_trials_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    names = sorted({name for r in rows for name in r["params"]})
    columns = ["number", "state", "value", "val_loss", "epochs_run", "seconds", *names]
    columns += ["note", "worker"]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        flat = {k: row[k] for k in columns if k in row}
        flat.update(row["params"])
        writer.writerow({k: "" if flat.get(k) is None else flat[k] for k in columns})
    write_text_atomically(path, buffer.getvalue())


def best_config(trial: Any, final_epochs: int) -> dict[str, Any]:
    """The best trial's full config for the final run: its settings, with train.epochs the
    final run's length instead of the trials' short one (coarse to fine)."""
    cfg = apply_overrides(
        config_from_dict(trial.user_attrs["config"]),
        {"train": {"epochs": final_epochs}},
        "best.yaml",
    )
    return config_to_dict(cfg)


def write_best_config(path: Path, trial: Any, trial_epochs: int, final_epochs: int) -> None:
    """A full config `tlcli finetune --config` accepts unchanged, with where it came from."""
    header = (
        f"# tlcli tune: best of the study, trial {trial.number}, val accuracy {trial.value:.4f}\n"
        f"# after {trial_epochs} epoch(s); train.epochs is set to the final run's {final_epochs}.\n"
        f"# Use: tlcli finetune DATA_DIR --config {path.name}\n"
    )
    config = yaml.safe_dump(best_config(trial, final_epochs), sort_keys=False)
    write_text_atomically(path, header + config)


def write_outputs(
    paths: TunePaths, study: Any, trial_epochs: int, final_epochs: int
) -> tuple[list[dict], Any]:
    """trials.csv, tune.png and best.yaml from the whole study (all workers' trials)."""
    from tlcli.tune.plots import plot_tune_trials

    trials = study.get_trials(deepcopy=False)
    rows = trial_rows(trials)
    best = best_trial(trials)
    write_trials_csv(paths.table, rows)
    plot_tune_trials(rows, paths.plot, best.number if best else None, study.user_attrs.get("space"))
    if best is not None and "config" in best.user_attrs:
        write_best_config(paths.best, best, trial_epochs, final_epochs)
    return rows, best


def lr_range_center(valley: float, steepest: float) -> float:
    """The geometric mean of fastai's two suggestions, clamped to LR_CENTER_RANGE.

    They bracket the useful LRs: the valley is the cautious one (early in the fall of the
    loss), the steepest descent the bold one. Centred between them, the log-uniform range
    (a decade either side) holds both unless they are more than 100x apart.
    """
    low, high = LR_CENTER_RANGE
    return min(max(math.sqrt(valley * steepest), low), high)


def sqlite_file_of(storage_url: str) -> Path | None:
    """The database file of a sqlite:/// URL; None for a server database."""
    prefix = "sqlite:///"
    if not storage_url.startswith(prefix) or storage_url == prefix + ":memory:":
        return None
    return Path(storage_url[len(prefix) :])


@contextmanager
def one_worker_at_a_time(lock_file: Path | None, reporter: Reporter) -> Iterator[None]:
    """An exclusive flock beside the SQLite database, so that workers started together run
    the LR range test once: the others wait, then read its result. The kernel drops the
    lock when its holder dies. A server database (several machines) has no shared file:
    each worker runs its own test and the first to finish sets the range."""
    if lock_file is None:
        yield
        return
    import fcntl

    with open(lock_file, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            reporter.note("waiting for another worker's LR range test")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lr_center_for(
    study: Any,
    data_dir: Path,
    base: Config,
    settings: TuneSettings,
    user_space: dict[str, ParamSpec | None],
    reporter: Reporter,
    storage_url: str,
) -> float:
    """The centre of the default LR range: from lr-find's suggestions (run once per study and
    kept in the storage), or optim.lr. Not needed when the space gives the LR range."""
    if not settings.lr_find or "lr" in user_space or "optim.lr" in user_space:
        return base.optim.lr
    # A searched strategy: the range test runs with partial, the middle of the three.
    strategy = base.strategy.name if base.strategy.name != "auto" else "partial"
    if strategy == "head-only" and base.strategy.head_fit == "lbfgs":
        return base.optim.lr  # no LR to search
    database = sqlite_file_of(storage_url)
    lock_file = database.with_name(database.name + ".lr-find.lock") if database else None
    with one_worker_at_a_time(lock_file, reporter):
        return _lr_center_once(study, data_dir, base, strategy, reporter)


def _lr_center_once(
    study: Any, data_dir: Path, base: Config, strategy: str, reporter: Reporter
) -> float:
    if "lr_center" in study.user_attrs:
        return float(study.user_attrs["lr_center"])
    from tlcli.tune.lr_find import find_lr

    cfg = apply_overrides(base, {"strategy": {"name": strategy}}, "lr-find")
    reporter.note(f"LR range test ({strategy}) to centre the LR range")
    # The same sweep as `tlcli lr-find`: fastai's valley depends on how long the flat start
    # is, so a shorter sweep would centre the search elsewhere than lr-find suggests.
    result = find_lr(data_dir, cfg, _Quiet(reporter))
    stored = study.user_attrs.get("lr_center")
    if stored is not None:  # another worker finished its range test first: share its range
        return float(stored)
    center = lr_range_center(result.suggestions.valley, result.suggestions.steepest)
    reporter.note(
        f"lr-find: valley {result.suggestions.valley:.2e}, steepest "
        f"{result.suggestions.steepest:.2e}; LR range centred on {center:.2e}"
    )
    study.set_user_attr("lr_center", center)
    study.set_user_attr("lr_find", result.to_dict() | {"curve": None})
    return center


class _Quiet:
    """Progress bars only (for the lr-find that centres the range)."""

    def __init__(self, outer: Reporter):
        self.outer = outer

    def start(self, task: str, total: int | None, description: str = "") -> None:
        self.outer.start(task, total, description)

    def advance(self, task: str, amount: int = 1) -> None:
        self.outer.advance(task, amount)

    def finish(self, task: str) -> None:
        self.outer.finish(task)

    def epoch(self, row: dict[str, Any]) -> None:
        pass

    def note(self, message: str, level: str = "info") -> None:
        if level != "info":
            self.outer.note(message, level)


def check_tune_request(data_dir: Path, settings: TuneSettings) -> Path:
    """The counts and the data path, checked before anything is read or written."""
    if settings.trials < 1:
        raise ConfigError(f"--trials {settings.trials} must be >= 1")
    if settings.epochs_per_trial < 1:
        raise ConfigError(f"--epochs-per-trial {settings.epochs_per_trial} must be >= 1")
    data_dir = Path(data_dir)
    if not data_dir.is_dir() and not is_manifest(data_dir):
        raise ConfigError(
            f"DATA_DIR {data_dir} is not a folder; pass an image folder or a manifest"
        )
    return data_dir


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def load_tune_study(storage: Any, study_name: str, settings: TuneSettings, worker: str) -> Any:
    """The study (created when new, with this worker as its creator), with tune's sampler
    and pruner."""
    import optuna

    created = create_study_record(storage, study_name)
    study = optuna.load_study(
        study_name=study_name,
        storage=storage,
        sampler=create_sampler(settings.trials),
        pruner=create_pruner(settings.pruner),
    )
    if created:
        study.set_user_attr("creator", worker)
    return study


def check_study_signature(study: Any, study_name: str, signature: dict[str, Any]) -> None:
    """A new study keeps the settings it was started with; a joined one must match them."""
    saved = study.user_attrs.get("tlcli")
    if saved is None:
        study.set_user_attr("tlcli", signature)
        return
    difference = first_difference(saved, json.loads(json.dumps(signature)))
    if difference:
        raise RunDirError(
            f"study {study_name!r} was started with other settings ({difference}); "
            "use the same options, or a new --study and --out"
        )


def finished_by(study: Any, worker: str) -> list[Any]:
    """The trials this run dir's worker finished (complete or pruned): what --trials counts."""
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("worker") == worker and t.state.name in FINISHED
    ]


def enqueue_baseline(study: Any, worker: str, space: dict, base: Config) -> None:
    """The defaults as a trial, so the search never reports a best below what finetune would
    do. Only the worker that created the study enqueues it: two workers that both saw an
    empty study would otherwise run it twice."""
    if study.user_attrs.get("creator") == worker and not study.user_attrs.get("baseline"):
        study.enqueue_trial(baseline_params(space, base), skip_if_exists=True)
        study.set_user_attr("baseline", True)


@dataclass(frozen=True)
class TrialRunner:
    """Optuna's objective: one trial is a short finetune run in paths.trials/NNNN."""

    data_dir: Path
    base: Config
    space: dict
    epochs_per_trial: int
    paths: TunePaths
    worker: str
    reporter: Reporter

    def __call__(self, trial: Any) -> float:
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial_cfg = sample_config(trial, self.space, self.base)
        trial.set_user_attr("config", config_to_dict(trial_cfg))
        head_only_fit = (
            trial_cfg.strategy.name == "head-only" and trial_cfg.strategy.head_fit == "lbfgs"
        )
        trial_reporter = TrialReporter(trial, self.reporter)
        pruning = OptunaPruning(trial, 1 if head_only_fit else self.epochs_per_trial)
        summary = self.finetune_trial(trial, trial_cfg, trial_reporter, pruning)
        val_loss = best_epoch_val_loss(summary)
        if val_loss is not None:
            trial.set_user_attr("val_loss", float(val_loss))  # breaks ties in best_trial
        return float(summary["val_acc"])

    def finetune_trial(
        self, trial: Any, trial_cfg: Config, trial_reporter: TrialReporter, pruning: OptunaPruning
    ) -> dict[str, Any]:
        import optuna

        from tlcli.recommend.advise import auto_strategy
        from tlcli.train.run import finetune

        trial_dir = self.paths.trials / f"{trial.number:04d}"
        try:
            summary = finetune(
                self.data_dir,
                trial_cfg,
                trial_dir,
                reporter=trial_reporter,
                choose_strategy=auto_strategy,
                hooks=[pruning],
            )
            pruning.check_pruned(summary["history"])
            return summary
        except optuna.TrialPruned as exc:
            trial.set_user_attr("note", str(exc))
            raise
        except TrainingDiverged as exc:
            # Diverged: the LR is too high. A finished, informative trial, not a crash.
            trial.set_user_attr("note", f"diverged: {exc}")
            raise optuna.TrialPruned(str(exc)) from None
        finally:
            trial_reporter.close()
            trial.set_user_attr("epochs_run", trial_reporter.epochs_run)
            # Trials are not resumed: last.pt only costs disk. best.pt stays for inspection.
            (trial_dir / "last.pt").unlink(missing_ok=True)


def run_trials(
    study: Any,
    runner: TrialRunner,
    trials: int,
    final_epochs: int,
    storage_url: str,
) -> None:
    """Optimize for `trials` more trials, rewriting the outputs after each; a stop keeps the
    finished trials in the storage."""
    paths, reporter, trial_epochs = runner.paths, runner.reporter, runner.epochs_per_trial

    def after_trial(study: Any, trial: Any) -> None:
        rows, best = write_outputs(paths, study, trial_epochs, final_epochs)
        row = next(r for r in rows if r["number"] == trial.number)
        value = "-" if row["value"] is None else f"{row['value']:.4f}"
        best_text = f"; best {best.value:.4f} (trial {best.number})" if best else ""
        reporter.note(
            f"trial {trial.number} {row['state'].lower()}: val acc {value} after "
            f"{row['epochs_run']} epochs, {row['seconds']}s{best_text}",
            "info",
        )

    try:
        study.optimize(runner, n_trials=trials, callbacks=[after_trial])
    except (KeyboardInterrupt, Interrupted):
        raise Interrupted(
            f"{interrupted_word()}; finished trials are kept in "
            f"{mask_storage_url(storage_url)}: rerun the same command to resume"
        ) from None
    except TlcliError:
        write_outputs(paths, study, trial_epochs, final_epochs)
        raise


def output_paths(paths: TunePaths, storage_url: str) -> dict[str, str]:
    return {
        "storage": mask_storage_url(storage_url),
        "trials_csv": str(paths.table),
        "plot": str(paths.plot),
        "best_config": str(paths.best),
        "trials": str(paths.trials),
    }


def tune(
    data_dir: Path,
    cfg: Config,
    settings: TuneSettings,
    out: Path | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Run (or resume, or join) a study; returns the summary with the trial rows and best."""
    reporter = reporter or NullReporter()
    started = time.perf_counter()
    data_dir = check_tune_request(data_dir, settings)
    user_space = load_space(settings.space_file) if settings.space_file else {}
    base = apply_overrides(cfg, {"train": {"epochs": settings.epochs_per_trial}}, "tune")
    resolve_space(user_space, base, base.optim.lr)  # fail fast, before any work
    create_pruner(settings.pruner)  # validate before touching the disk (imports optuna)
    out = Path(out) if out else default_tune_dir(data_dir)
    study_name = settings.study or default_study_name(data_dir)
    storage_url = settings.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    quiet_optuna()
    # A given --storage is connected to before --out is claimed: a typo must not bind the
    # run dir to a database that does not exist. The default one lives in --out.
    refuse_outputs_in_data(out, storage_url, data_dir)  # before connecting creates the file
    storage = open_storage(storage_url) if settings.storage else None
    paths, resumed = open_tune_dir(out, study_name, mask_storage_url(storage_url), data_dir)
    storage = storage or open_storage(storage_url)
    worker = f"{socket.gethostname()}:{paths.root.resolve()}"
    study = load_tune_study(storage, study_name, settings, worker)
    check_study_signature(study, study_name, study_signature(base, settings, user_space))
    center = lr_center_for(study, data_dir, base, settings, user_space, reporter, storage_url)
    space = resolve_space(user_space, base, center)
    study.set_user_attr("space", space_to_dict(space))

    fail_dead_trials(study, storage, reporter)
    mine = len(finished_by(study, worker))
    remaining = settings.trials - mine
    if mine:
        reporter.note(
            f"resuming: {mine} of {settings.trials} trials of this run dir are finished; "
            f"running {max(remaining, 0)} more"
        )
    enqueue_baseline(study, worker, space, base)
    runner = TrialRunner(data_dir, base, space, settings.epochs_per_trial, paths, worker, reporter)
    if remaining > 0:
        run_trials(study, runner, remaining, cfg.train.epochs, storage_url)
    rows, best = write_outputs(paths, study, settings.epochs_per_trial, cfg.train.epochs)
    if best is None:
        raise_no_best(paths, rows)
    return {
        "run_dir": str(paths.root),
        "study": study_name,
        "storage": mask_storage_url(storage_url),
        "resumed": resumed,
        "data_dir": str(data_dir),
        "epochs_per_trial": settings.epochs_per_trial,
        "lr_center": center,
        "space": space_to_dict(space),
        "trials_run_now": len(finished_by(study, worker)) - mine,
        "trials_finished": sum(r["state"] in FINISHED for r in rows),
        "best": {
            "number": best.number,
            "val_acc": best.value,
            "params": dict(best.params),
            "config": str(paths.best),
        },
        "seconds": round(time.perf_counter() - started, 1),
        "paths": output_paths(paths, storage_url),
        "trials": rows,
    }


def raise_no_best(paths: TunePaths, rows: list[dict[str, Any]]) -> None:
    pruned = sum(r["state"] == "PRUNED" for r in rows)
    raise RunDirError(
        f"no trial completed ({pruned} pruned); see {paths.table}, then add --trials or "
        "use --pruner none"
    )
