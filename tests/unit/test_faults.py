"""Faults during `tlcli finetune`: SIGINT, SIGTERM and SIGKILL at random points and in the
middle of a checkpoint write, a disk that fills up, a GPU that runs out of memory.

Whatever happens, the run dir holds a last.pt that loads with weights_only=True, `--resume`
finishes the run, and on CPU with a fixed seed the resumed run ends exactly where an
uninterrupted run ends (metrics and weights bit for bit). The faulty runs are real
processes running the CLI, forked by tests/fault_driver.py (which injects the faults) after
it imported torch once; the test sends the signals. The kill times are random: the seed is
in every failure message, and TLCLI_FAULT_SEED=<seed> replays it.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from corpus import make_image_folder, tree_digest
from typer.testing import CliRunner

from tlcli.checkpoint import save_checkpoint
from tlcli.cli import app
from tlcli.errors import EXIT_INTERRUPTED, EXIT_RESOURCE, EXIT_TERMINATED, ResourceError

REPO = Path(__file__).resolve().parents[2]
DRIVER = REPO / "tests" / "fault_driver.py"
EPOCHS = 3
# Every source of randomness is switched on, so a resume that forgets one RNG, the data
# order, the augmentation stream, the EMA or the schedule position shows up as a mismatch:
# strong augmentation (RandAugment, erasing, mixup/cutmix), dropout, EMA, a head-only
# warmup epoch (parameters unfrozen mid-run), cosine schedule with warmup.
TRAIN_ARGS = [
    "--model", "test_resnet", "--no-pretrained", "--strategy", "full",
    "--epochs", str(EPOCHS), "--batch-size", "4", "--image-size", "64",
    "--augment", "strong", "--drop-rate", "0.2", "--ema", "--seed", "3",
    "--device", "cpu", "--workers", "1", "--set", "strategy.head_warmup_epochs=1",
]  # fmt: skip
# Quick runs for the in-process tests: QUICK_ARGS + [epochs].
QUICK_ARGS = [
    "--model", "test_resnet", "--no-pretrained", "--strategy", "partial",
    "--image-size", "64", "--device", "cpu", "--workers", "1", "--epochs",
]  # fmt: skip
STEP_DELAY = 0.1  # s per training step in the killed runs: 3 steps x 3 epochs >= 0.9 s
RANDOM_KILL_WINDOW = 0.8  # s after the first last.pt: always before the run could finish
HANG_EPOCH = 2  # the write of last.pt after this epoch stalls halfway
DISK_LIMIT = 64 * 1024  # bytes: metrics and configs fit, a checkpoint does not
START_TIMEOUT = 90  # s for a subprocess to import torch and reach its trigger
EXIT_TIMEOUT = 30  # s for a signalled process to exit: longer is a hang
SEED = int(os.environ.get("TLCLI_FAULT_SEED", time.time_ns() % 1_000_000))

runner = CliRunner()


@dataclass
class Fault:
    name: str
    signal: int | None  # sent by the test; None: the fault is inside the process
    trigger: str  # "random": at a random time after the first last.pt; "mid-write"; "none"
    options: dict = field(default_factory=dict)  # fault_driver.py's per-child options
    # Filled in when it has run:
    returncode: int | None = None
    stderr: str = ""
    delay: float = 0.0
    run: Path = Path()


FAULTS = [
    Fault("sigint-random", signal.SIGINT, "random"),
    Fault("sigkill-random", signal.SIGKILL, "random"),
    Fault("sigterm-random", signal.SIGTERM, "random"),
    Fault("sigint-mid-write", signal.SIGINT, "mid-write", {"hang_epoch": HANG_EPOCH}),
    Fault("sigkill-mid-write", signal.SIGKILL, "mid-write", {"hang_epoch": HANG_EPOCH}),
    Fault("disk-full", None, "none", {"fsize": DISK_LIMIT}),
]


def _child(fault: Fault, data: Path, base: Path) -> dict:
    fault.run = base / fault.name
    return {
        "name": fault.name,
        "argv": ["finetune", str(data), *TRAIN_ARGS, "--out", str(fault.run)],
        "stderr": str(base / f"{fault.name}.stderr"),
        "marker": str(base / f"{fault.name}.marker"),
        "step_delay": STEP_DELAY,
        **fault.options,
    }


def _run_faults(data: Path, base: Path, cache: Path) -> None:
    """Start every faulty run at once; signal each at its trigger; wait for all to exit."""
    rng = random.Random(SEED)
    for fault in FAULTS:
        fault.delay = rng.uniform(0, RANDOM_KILL_WINDOW) if fault.trigger == "random" else 0.0
    plan = {
        "children": [_child(f, data, base) for f in FAULTS],
        "pids": str(base / "pids.json"),
        "results": str(base / "results.json"),
    }
    (base / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TLCLI_CACHE_DIR": str(cache)}
    server = subprocess.Popen(
        [sys.executable, str(DRIVER), str(base / "plan.json")],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stderr=(base / "server.stderr").open("w"),
    )
    pids: dict[str, int] = {}
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (base / "pids.json").exists():
            assert server.poll() is None, (base / "server.stderr").read_text()
            assert time.monotonic() < deadline, "the fault driver did not start"
            time.sleep(0.05)
        pids = json.loads((base / "pids.json").read_text())
        first_last: dict[str, float] = {}
        pending = {f.name: f for f in FAULTS if f.signal is not None}
        while pending and time.monotonic() < deadline and server.poll() is None:
            for name, fault in list(pending.items()):
                if fault.trigger == "random":
                    if name not in first_last and (fault.run / "last.pt").exists():
                        first_last[name] = time.monotonic()
                    ready = time.monotonic() - first_last.get(name, float("inf")) >= fault.delay
                else:
                    ready = Path(_child(fault, data, base)["marker"]).exists()
                if ready:
                    os.kill(pids[name], fault.signal)
                    pending.pop(name)
            time.sleep(0.01)
        try:
            server.wait(EXIT_TIMEOUT)
            results = json.loads((base / "results.json").read_text())
        except subprocess.TimeoutExpired:
            results = {}  # a hang: asserted in the test
        for fault in FAULTS:
            fault.returncode = results.get(fault.name)
            fault.stderr = Path(_child(fault, data, base)["stderr"]).read_text()
    finally:
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if server.poll() is None:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def one_thread():
    """In-process runs use one thread, like the OMP_NUM_THREADS=1 subprocesses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def faults(tmp_path_factory, one_thread) -> dict:
    base = tmp_path_factory.mktemp("faults")
    data = make_image_folder(base / "data", {"red": 8, "blue": 8})
    cache = base / "cache"
    before = tree_digest(data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLCLI_CACHE_DIR", str(cache))
        _run_faults(data, base, cache)
        reference = base / "reference"
        result = runner.invoke(app, ["finetune", str(data), *TRAIN_ARGS, "--out", str(reference)])
        assert result.exit_code == 0, result.stderr
    return {
        "data": data,
        "before": before,
        "reference": reference,
        "by_name": {f.name: f for f in FAULTS},
    }


def _load_last(run: Path) -> dict:
    data = torch.load(run / "last.pt", map_location="cpu", weights_only=True)  # no code runs
    assert data["format"] == "tlcli-checkpoint"
    return data


def _history(run: Path) -> list[dict]:
    rows = json.loads((run / "summary.json").read_text())["history"]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.mark.parametrize("name", [f.name for f in FAULTS])
def test_killed_run_keeps_a_loadable_last_and_resumes_to_the_uninterrupted_result(faults, name):
    fault = faults["by_name"][name]
    run, why = fault.run, f"{name}, TLCLI_FAULT_SEED={SEED}, kill after {fault.delay:.2f}s"
    assert fault.returncode is not None, f"hang: no exit within {EXIT_TIMEOUT}s ({why})"
    assert "Traceback" not in fault.stderr, why
    expected_rc = {
        signal.SIGINT: EXIT_INTERRUPTED,
        signal.SIGTERM: EXIT_TERMINATED,
        signal.SIGKILL: -signal.SIGKILL,
    }
    assert fault.returncode == expected_rc.get(fault.signal, EXIT_RESOURCE), (why, fault.stderr)

    last = _load_last(run)
    epoch = last["train_state"]["loop"]["epoch"]
    assert 0 <= epoch < EPOCHS, why
    temps = list(run.glob(".*.tmp"))
    if fault.trigger == "mid-write":
        assert epoch == HANG_EPOCH - 1, why  # the stalled write never replaced last.pt
    if name == "sigkill-mid-write":
        assert temps, "the kill did not land mid-write"  # its half-written temp file
    elif fault.signal != signal.SIGKILL:
        assert not temps, temps  # an orderly exit cleans up after itself
    if fault.signal in (signal.SIGINT, signal.SIGTERM):
        line = _error_line(fault.stderr)
        word = "interrupted" if fault.signal == signal.SIGINT else "terminated (SIGTERM)"
        assert line.startswith(f"error: {word};") and f"--resume {run}" in line, line
        assert f"holds epoch {epoch}:" in line, line  # the message tells the truth
    if name == "disk-full":
        line = _error_line(fault.stderr)
        assert line.startswith("error: disk full") and "previous checkpoint is intact" in line
        assert epoch == 0 and not (run / "best.pt").exists()

    resumed = runner.invoke(app, ["finetune", "--resume", str(run), "--json"])
    assert resumed.exit_code == 0, (why, resumed.stderr)
    assert "Traceback" not in resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["epochs_run"] == EPOCHS
    assert not list(run.glob(".*.tmp")), "resume leaves no stale temp files"
    reference = faults["reference"]
    assert _history(run) == _history(reference), why
    for key in ("val_acc", "best_epoch", "best_weights"):
        assert summary[key] == json.loads((reference / "summary.json").read_text())[key], key
    mine, theirs = _load_last(run), _load_last(reference)
    for weights in ("state_dict", "ema_state_dict"):
        assert all(torch.equal(mine[weights][k], theirs[weights][k]) for k in theirs[weights])
    assert tree_digest(faults["data"]) == faults["before"]  # the user's images untouched


def test_the_reference_run_really_used_every_random_source(faults):
    """Guard against the equality above being trivial (e.g. nothing trained after resume)."""
    history = [row for row in _history(faults["reference"]) if int(row["epoch"]) >= 1]
    assert [int(row["epoch"]) for row in history] == list(range(1, EPOCHS + 1))  # 0: LP probe
    assert len({row["train_loss"] for row in history}) == EPOCHS
    last = _load_last(faults["reference"])
    assert last["config"]["data"]["augment"] == "strong" and last["config"]["train"]["ema"]


# --- in-process: the write path itself ------------------------------------------------------


class FailingHandle:
    """Raises `error` once `after` bytes have been written, as a disk that fills up does."""

    def __init__(self, handle, error: BaseException, after: int):
        self.handle, self.error, self.after, self.written = handle, error, after, 0

    def write(self, data) -> int:
        if self.written + len(data) > self.after:
            raise self.error
        self.written += self.handle.write(data)
        return len(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


@pytest.fixture
def failing_writes(monkeypatch):
    """failing_writes(error): the next checkpoint write fails halfway with error."""
    from tlcli import atomic

    def arm(error: BaseException) -> None:
        real_fdopen = os.fdopen

        def fdopen(fd, *args, **kwargs):
            return FailingHandle(real_fdopen(fd, *args, **kwargs), error, after=4096)

        monkeypatch.setattr(atomic.os, "fdopen", fdopen)

    return arm


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_disk_full_mid_write_is_a_resource_error_and_keeps_the_previous_file(
    tmp_path, failing_writes, code
):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"state_dict": {"w": torch.ones(10_000)}})
    before = path.read_bytes()
    failing_writes(OSError(code, os.strerror(code)))
    with pytest.raises(ResourceError) as excinfo:  # torch.save wraps it: must be unwrapped
        save_checkpoint(path, {"state_dict": {"w": torch.zeros(10_000)}})
    assert excinfo.value.exit_code == EXIT_RESOURCE
    assert "disk full" in excinfo.value.message and str(path) in excinfo.value.message
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left


def test_ctrl_c_mid_write_stays_a_keyboard_interrupt(tmp_path, failing_writes):
    """torch.save turns it into a RuntimeError; the CLI must still see Ctrl-C (exit 130)."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"state_dict": {"w": torch.ones(10_000)}})
    before = path.read_bytes()
    failing_writes(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"state_dict": {"w": torch.zeros(10_000)}})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_other_write_errors_are_not_disguised_as_a_full_disk(tmp_path, failing_writes):
    failing_writes(OSError(errno.EIO, "Input/output error"))
    with pytest.raises(Exception) as excinfo:
        save_checkpoint(tmp_path / "last.pt", {"w": torch.zeros(10_000)})
    assert not isinstance(excinfo.value, ResourceError)
    assert not list(tmp_path.iterdir())


def test_disk_full_anywhere_else_in_a_command_is_one_line_exit_7(tmp_path, monkeypatch):
    """The CLI's net for writes outside checkpoints (metrics.csv, plots, reports)."""
    from tlcli.train import run as run_module

    def full(path, history):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(run_module, "write_metrics", full)
    data = make_image_folder(tmp_path / "data", {"a": 6, "b": 6})
    out = tmp_path / "run"
    result = runner.invoke(app, ["finetune", str(data), *QUICK_ARGS, "1", "--out", str(out)])
    assert result.exit_code == EXIT_RESOURCE, result.stderr
    line = _error_line(result.stderr)
    assert line.startswith("error: disk full") and "metrics.csv" in line, line
    assert "Traceback" not in result.stderr
    assert _load_last(out)["train_state"]["loop"]["epoch"] == 1


@pytest.mark.parametrize("step", ["try_weight_averages", "calibrate_best", "write_finetune_report"])
def test_a_stop_after_the_last_epoch_is_one_line_and_resume_finishes_the_run(
    tmp_path, monkeypatch, one_thread, step
):
    """Ctrl-C while the weights are averaged, calibrated or the results written: last.pt holds
    the last epoch, and --resume does only what was left, to the uninterrupted result."""
    from tlcli.train import run as run_module

    data = make_image_folder(tmp_path / "data", {"a": 6, "b": 6})
    args = [*QUICK_ARGS, "2", "--seed", "1", "--json"]
    reference = runner.invoke(app, ["finetune", str(data), *args, "--out", str(tmp_path / "ref")])
    assert reference.exit_code == 0, reference.stderr
    real = getattr(run_module, step)

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, step, stop)
    out = tmp_path / "run"
    result = runner.invoke(app, ["finetune", str(data), *args, "--out", str(out)])
    assert result.exit_code == EXIT_INTERRUPTED, result.stderr
    assert "Traceback" not in result.stderr
    line = _error_line(result.stderr)
    assert line.startswith("error: interrupted after the last epoch"), line
    assert f"holds epoch 2: finish with tlcli finetune --resume {out}" in line, line
    if step != "write_finetune_report":  # the report is built from summary.json
        assert not (out / "summary.json").exists()
    monkeypatch.setattr(run_module, step, real)
    resumed = runner.invoke(app, ["finetune", "--resume", str(out), "--json"])
    assert resumed.exit_code == 0, resumed.stderr
    summary, expected = json.loads(resumed.stdout), json.loads(reference.stdout)
    for key in ("val_acc", "best_epoch", "best_weights", "temperature", "epochs_run", "history"):
        got = summary[key] if key != "history" else _history(out)
        want = expected[key] if key != "history" else _history(tmp_path / "ref")
        assert got == want, key
    again = runner.invoke(app, ["finetune", "--resume", str(out)])
    assert again.exit_code == 6 and "is finished" in _error_line(again.stderr), again.stderr


def test_a_resume_rebuilds_a_missing_best_from_the_probe_or_names_the_lost_epoch(
    tmp_path, one_thread
):
    """best.pt gone (never written or deleted): the LP-FT probe or last.pt's own epoch is
    rebuilt; another best epoch's weights are lost, and that is one line before training."""
    data = make_image_folder(tmp_path / "data", {"a": 6, "b": 6})
    out = tmp_path / "run"
    first = runner.invoke(app, ["finetune", str(data), *QUICK_ARGS, "1", "--out", str(out)])
    assert first.exit_code == 0, first.stderr
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    (out / "best.pt").unlink()
    resumed = runner.invoke(app, ["finetune", "--resume", str(out), "--epochs", "2", "--json"])
    assert resumed.exit_code == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    rebuilt = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    if summary["best_epoch"] < 2:  # not replaced by epoch 2: the rebuilt one was kept
        assert all(torch.equal(rebuilt["state_dict"][k], v) for k, v in best["state_dict"].items())
    last = _load_last(out)
    last["train_state"]["loop"]["best_epoch"] = 1  # a best epoch that is neither 0 nor 2
    save_checkpoint(out / "last.pt", last)
    (out / "best.pt").unlink()
    lost = runner.invoke(app, ["finetune", "--resume", str(out), "--epochs", "3"])
    assert lost.exit_code == 6, lost.stderr
    line = _error_line(lost.stderr)
    assert "best epoch, 1) is missing" in line and "Traceback" not in lost.stderr, line


# --- CUDA out of memory (simulated: no GPU needed) ------------------------------------------


def _raise_oom(*args, **kwargs):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("batch_size, advice", [(8, "--batch-size 4"), (1, "--image-size")])
def test_cuda_oom_in_a_step_names_a_batch_size_that_may_fit(
    tmp_path, monkeypatch, batch_size, advice
):
    from tlcli.train import loop

    monkeypatch.setattr(loop, "forward_backward", _raise_oom)
    data = make_image_folder(tmp_path / "data", {"a": 6, "b": 6})
    out = tmp_path / "run"
    args = [
        "finetune",
        str(data),
        *QUICK_ARGS,
        "1",
        "--batch-size",
        str(batch_size),
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_RESOURCE, result.stderr
    line = _error_line(result.stderr)
    assert line.startswith("error: out of GPU memory") and advice in line, line
    assert f"at batch size {batch_size}" in line or batch_size == 1
    assert "Traceback" not in result.stderr
    assert _load_last(out)["train_state"]["loop"]["epoch"] == 0  # the run dir is still usable


def test_cuda_oom_outside_training_is_still_one_line(tmp_path, monkeypatch):
    from tlcli import evaluate
    from tlcli.config import load_config
    from tlcli.train.run import finetune

    data = make_image_folder(tmp_path / "data", {"a": 4, "b": 4})
    cfg = load_config(None, ["model.name=test_resnet", "model.pretrained=false",
                             "strategy.name=head-only", "data.image_size=64",
                             "data.workers=1", "train.device=cpu"])  # fmt: skip
    summary = finetune(data, cfg, out=tmp_path / "run")
    monkeypatch.setattr(evaluate, "predict_probabilities", _raise_oom)
    result = runner.invoke(app, ["evaluate", summary["paths"]["best"], str(data)])
    assert result.exit_code == EXIT_RESOURCE, result.stderr
    line = _error_line(result.stderr)
    assert line == "error: out of GPU memory: run again with a smaller --batch-size", line


# --- Ctrl-C that Python swallows ------------------------------------------------------------


class SigintInFinalizer:
    """Ctrl-C arriving while a finalizer runs: Python prints "Exception ignored" and drops
    the KeyboardInterrupt (what matplotlib's and torch's weakref callbacks make likely)."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)


class FailsInFinalizer:
    def __del__(self):
        raise ValueError("a real bug in a finalizer")


@pytest.fixture
def ctrl_c_delivered():
    """Python's own SIGINT handler, as in a terminal: a test run started in the background
    (`cmd &` in a script) inherits SIGINT ignored, and tlcli rightly leaves it so."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_delivered")
def test_a_swallowed_ctrl_c_is_raised_again_and_not_printed(monkeypatch):
    from tlcli.interrupt import raise_if_interrupted, recorded_stop_signals

    printed = []  # what CPython would print as "Exception ignored in ... Traceback"
    monkeypatch.setattr(sys, "unraisablehook", lambda u: printed.append(u.exc_type))
    with recorded_stop_signals():
        SigintInFinalizer()  # the KeyboardInterrupt is raised in __del__ and dropped
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
        raise_if_interrupted()  # raised once, not forever
        FailsInFinalizer()  # other dropped exceptions are still reported
    assert printed == [ValueError]


@pytest.mark.usefixtures("ctrl_c_delivered")
def test_a_swallowed_ctrl_c_still_stops_finetune_with_exit_130(tmp_path, monkeypatch):
    from tlcli.train import loop

    real = loop.forward_backward

    def step(setup, x, targets, step):
        if step == 1:
            SigintInFinalizer()
        return real(setup, x, targets, step)

    monkeypatch.setattr(loop, "forward_backward", step)
    data = make_image_folder(tmp_path / "data", {"a": 6, "b": 6})
    out = tmp_path / "run"
    args = ["finetune", str(data), *QUICK_ARGS, "3", "--batch-size", "4"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == EXIT_INTERRUPTED, result.stderr
    line = _error_line(result.stderr)
    assert line.startswith("error: interrupted") and "holds epoch 0" in line, line
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert _load_last(out)["train_state"]["loop"]["epoch"] == 0
