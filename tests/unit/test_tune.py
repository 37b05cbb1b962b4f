"""`lr-find` and `tune` on tiny random-init models and tiny generated images.

The LR finder's suggestions are read off synthetic curves whose answer is known; the range
test must stop on divergence and restore what it touched. A search space file is parsed
strictly (one-line errors). A study survives being killed and resumes without redoing
finished trials, and two workers on one SQLite storage share one study without losing or
duplicating trials. best.yaml is a config `finetune --config` takes unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from corpus import make_image_folder
from typer.testing import CliRunner

from tlcli.cli import app
from tlcli.config import Config, apply_overrides, load_config
from tlcli.errors import EXIT_CONFIG, EXIT_RUN_DIR, ConfigError
from tlcli.progress import NullReporter
from tlcli.train.run import prepare_job
from tlcli.tune.lr_find import (
    DIVERGE_FACTOR,
    lr_schedule,
    range_test,
    range_test_setup,
    suggest_lrs,
    suggest_valley,
)
from tlcli.tune.search import TuneSettings, tune
from tlcli.tune.space import (
    CONDITIONAL_PARAMS,
    TRAINER_PARAMS,
    default_space,
    load_space,
    parse_space,
    resolve_space,
    sample_config,
)

# Tiny and fast: random init, 32 px inputs, one decode thread, CPU.
TINY = [
    "model.name=test_resnet",
    "model.pretrained=false",
    "data.image_size=32",
    "data.batch_size=8",
    "data.workers=1",
    "train.device=cpu",
    "train.epochs=1",
]
runner = CliRunner()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Two colour-coded classes, 12 images each at 32 px (a flat folder: the split is made)."""
    root = tmp_path_factory.mktemp("data") / "images"
    return make_image_folder(root, {"red": 12, "blue": 12}, side=32)


def _cfg(*sets: str) -> Config:
    return load_config(None, [*TINY, *sets])


def _cli_sets(*extra: str) -> list[str]:
    return [a for s in [*TINY, *extra] for a in ("--set", s)]


def _invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _assert_one_line_error(result, code: int, *words: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


# --- LR range test: suggestions on known curves ---------------------------------------------

# A range-test-like curve over the default 1e-7..10 sweep: flat, then a fall shaped like the
# Beta(2, 4) CDF between log10(lr) = -5 and -1.5 (steepest at a quarter of the way: -4.125),
# then a blow-up.
FALL_START, FALL_END = -5.0, -1.5
STEEPEST_LOG10 = FALL_START + 0.25 * (FALL_END - FALL_START)


def _synthetic_curve(num_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    lrs = lr_schedule(1e-7, 10.0, num_iter)
    x = np.log10(lrs)
    u = np.clip((x - FALL_START) / (FALL_END - FALL_START), 0.0, 1.0)
    beta_cdf = 1 - (1 - u) ** 4 * (1 + 4 * u)  # density 20 u (1-u)^3, mode at u = 1/4
    loss = 2.0 - 1.5 * beta_cdf + 3.0 * np.clip(x - FALL_END, 0, None) ** 2
    return lrs, loss


def test_steepest_suggestion_is_the_known_steepest_point():
    lrs, loss = _synthetic_curve()
    found = suggest_lrs(list(lrs), list(loss), len(lrs))
    step = np.log10(lrs[1] / lrs[0])
    assert abs(math.log10(found.steepest) - STEEPEST_LOG10) <= step
    assert found.steepest_loss == pytest.approx(loss[np.argmin(abs(lrs - found.steepest))])


def test_valley_is_inside_the_fall_past_the_steepest_point():
    lrs, loss = _synthetic_curve()
    found = suggest_lrs(list(lrs), list(loss), len(lrs))
    x = math.log10(found.valley)
    # fastai's valley: about the middle of the longest descent, here -5 .. -1.5.
    assert FALL_START < x < FALL_END
    assert abs(x - (FALL_START + FALL_END) / 2) < 0.3
    assert found.valley > found.steepest  # the two suggestions differ on this curve
    assert found.valley_loss < 2.0  # on the falling part, not the flat start


def test_valley_on_short_and_flat_curves_stays_in_bounds():
    assert suggest_valley(np.array([3.0, 2.0])) in (0, 1)  # fastai's arithmetic gives -1 here
    assert suggest_valley(np.full(10, 1.0)) == 0  # nothing falls: the first point
    # A curve that only falls: the middle of the whole curve.
    assert suggest_valley(np.linspace(3, 1, 30)) in range(12, 18)


def test_suggestions_refuse_a_curve_that_diverged_at_once():
    with pytest.raises(ConfigError, match="diverged after 2 steps"):
        suggest_lrs([1e-7, 1e-6], [1.0, 9.0], 100)


def test_every_range_test_step_is_the_training_loops_train_step(images, monkeypatch):
    """lr-find steps through train.loop.train_step (fastai's LRFinder runs inside the fit
    loop), so augmentation, channels_last, clipping and the LR groups cannot drift."""
    import tlcli.tune.lr_find as lr_find
    from tlcli.train import loop

    scales: list[float] = []

    def recorded(setup, images, labels, generator, lr_scale, step, meter=None):
        scales.append(lr_scale)
        return loop.train_step(setup, images, labels, generator, lr_scale, step, meter)

    monkeypatch.setattr(lr_find, "train_step", recorded)
    cfg = _cfg("strategy.name=partial", "strategy.trainable_stages=1")
    setup = range_test_setup(prepare_job(images, cfg, NullReporter()))
    test = range_test(setup, cfg.optim.lr, 20, 1e-5, 1e-3)
    assert test.stop_reason == "finished" and len(test.lrs) == 20
    assert scales == pytest.approx([lr / cfg.optim.lr for lr in test.lrs])


def momentum_buffers(optimizer: torch.optim.Optimizer) -> dict[int, torch.Tensor]:
    return {i: s["momentum_buffer"].clone() for i, s in optimizer.state_dict()["state"].items()}


def test_range_test_stops_on_divergence_and_restores_everything(images):
    # SGD with momentum: its velocity is state the range test changes and must put back
    # (plain SGD has none, so restoring it could not fail).
    cfg = _cfg("strategy.name=partial", "strategy.trainable_stages=2", "optim.name=momentum")
    job = prepare_job(images, cfg, NullReporter())
    setup = range_test_setup(job)
    # A velocity from one step of made-up gradients, as after some training.
    params = [p for g in setup.optimizer.param_groups for p in g["params"]]
    for param in params:
        param.grad = torch.randn_like(param)
    setup.optimizer.step()
    setup.optimizer.zero_grad(set_to_none=True)
    before = {k: v.clone() for k, v in job.model.state_dict().items()}
    velocity_before = momentum_buffers(setup.optimizer)
    assert len(velocity_before) == len(params)
    lrs_before = [g["lr"] for g in setup.optimizer.param_groups]
    rng_before = torch.get_rng_state()

    ratios: list[list[float]] = []
    velocity_during: list[dict[int, torch.Tensor]] = []

    class GroupLRs(NullReporter):
        def advance(self, task: str, amount: int = 1) -> None:
            ratios.append([g["lr"] / g["initial_lr"] for g in setup.optimizer.param_groups])
            velocity_during[:] = [momentum_buffers(setup.optimizer)]

    num_iter = 60
    test = range_test(setup, cfg.optim.lr, num_iter, 1e-4, 1e6, GroupLRs())
    assert test.stop_reason in ("diverged", "non-finite loss"), test.stop_reason
    assert len(test.lrs) < num_iter
    if test.stop_reason == "diverged":
        assert test.smoothed[-1] > DIVERGE_FACTOR * min(test.smoothed[:-1])
    # The LRs follow the geometric schedule.
    assert test.lrs == pytest.approx(list(lr_schedule(1e-4, 1e6, num_iter)[: len(test.lrs)]))
    # Every group moves by the same factor: the backbone keeps its fraction of the head's LR.
    mults = {g["lr_mult"] for g in setup.optimizer.param_groups}
    assert mults == {1.0, cfg.optim.backbone_lr_mult}
    for step_ratios, lr in zip(ratios, test.lrs, strict=False):
        assert step_ratios == pytest.approx([lr / cfg.optim.lr] * len(step_ratios))
    # Weights, BatchNorm statistics, optimizer state and RNG come back as they were.
    after = job.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # The steps changed every velocity; the restore put each one back.
    during = velocity_during[0]
    assert not any(torch.equal(during[i], velocity_before[i]) for i in velocity_before)
    velocity_after = momentum_buffers(setup.optimizer)
    assert velocity_after.keys() == velocity_before.keys()
    changed = [i for i in velocity_before if not torch.equal(velocity_after[i], velocity_before[i])]
    assert not changed, f"{len(changed)} of {len(velocity_before)} velocities not restored"
    assert [g["lr"] for g in setup.optimizer.param_groups] == lrs_before
    assert torch.equal(torch.get_rng_state(), rng_before)


# --- search space files -----------------------------------------------------------------------

LR = {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}


@pytest.mark.parametrize(
    "data, words",
    [
        ({"learning_rate": LR}, ["unknown parameter 'learning_rate'"]),
        ({"optim.nope": LR}, ["unknown parameter 'optim.nope'"]),
        ({"lr": {**LR, "step": 0.1}}, ["lr", "unknown key 'step'"]),
        ({"lr": {**LR, "low": 1e-2, "high": 1e-4}}, ["lr", "low (0.01) must be below high"]),
        ({"lr": {**LR, "low": 0.0}}, ["lr", "log range needs low > 0"]),
        ({"lr": {**LR, "high": 50.0}}, ["lr", "optim.lr=50.0 is out of range"]),
        ({"lr": {**LR, "low": "tiny"}}, ["lr.low must be a number"]),
        ({"lr": {"type": "normal", "low": 0, "high": 1}}, ["lr", "type must be one of"]),
        ({"lr": [1e-4, 1e-2]}, ["lr must be a mapping"]),
        ({"weight_decay": {"type": "float", "low": 0.0, "high": 2.0}}, ["optim.weight_decay"]),
        ({"optimizer": {"type": "categorical", "choices": ["adamw", "lion"]}}, ["not one of"]),
        ({"optimizer": {"type": "categorical", "choices": []}}, ["non-empty list"]),
        ({"optimizer": {"type": "categorical", "choices": ["adamw"], "low": 1}}, ["low"]),
        ({"augment": {"type": "float", "low": 0, "high": 1}}, ["use type categorical"]),
        ({"trainable_stages": {"type": "float", "low": 1, "high": 3}}, ["use type int"]),
        ({"trainable_stages": {"type": "int", "low": 1, "high": 2.5}}, ["whole-number"]),
        ({"lr": LR, "optim.lr": LR}, ["same config key"]),
        (["lr"], ["expected a mapping"]),
        ({"lr": {**LR, 1: 2}}, ["lr", "unknown key 1"]),  # not a string key: was a TypeError
    ],
)
def test_bad_space_is_a_one_line_config_error(data, words):
    with pytest.raises(ConfigError) as caught:
        parse_space(data, "space.yaml")
    message = caught.value.message
    assert "\n" not in message and message.startswith("space.yaml")
    for word in words:
        assert word in message, message


def test_space_file_parses_yaml_numbers_and_null(tmp_path):
    path = tmp_path / "space.yaml"
    # 1e-4 without a dot is a string to PyYAML (YAML 1.1): it must still be a number.
    path.write_text(
        "lr: {type: float, low: 1e-4, high: 3e-2, log: true}\n"
        "optimizer: {type: categorical, choices: [nesterov, adamw]}\n"
        "drop_path_rate: null\n"
        "schedule.warmup_epochs: {type: float, low: 0, high: 2}\n"
    )
    user = load_space(path)
    assert user["lr"].low == 1e-4 and user["lr"].high == 3e-2 and user["lr"].log
    assert user["drop_path_rate"] is None
    space = resolve_space(user, _cfg("strategy.name=partial"), lr_center=1e-3)
    assert "drop_path_rate" not in space  # null: not searched
    assert "strategy" not in space  # fixed by the config
    assert space["optimizer"].choices == ("nesterov", "adamw")
    assert space["weight_decay"] == default_space(1e-3)["weight_decay"]  # defaults kept
    assert space["schedule.warmup_epochs"].high == 2.0


def test_space_contradicting_the_config_is_refused():
    user = parse_space({"strategy": {"type": "categorical", "choices": ["partial"]}}, "s")
    with pytest.raises(ConfigError, match="config fixes it to partial"):
        resolve_space(user, _cfg("strategy.name=partial"), 1e-3)
    # head-only with the L-BFGS head: no LR, no optimizer, no backbone: nothing to search.
    only_lr = parse_space({k: None for k in CONDITIONAL_PARAMS - TRAINER_PARAMS}, "s")
    with pytest.raises(ConfigError, match="nothing to search"):
        resolve_space(only_lr, _cfg("strategy.name=head-only"), 1e-3)


def test_sampled_configs_stay_inside_the_space():
    base = apply_overrides(Config(), {"train": {"epochs": 1}}, "test")  # strategy auto
    space = resolve_space({}, base, lr_center=2e-3)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    strategies = set()
    for _ in range(40):
        trial = study.ask()
        cfg = sample_config(trial, space, base)
        strategies.add(cfg.strategy.name)
        assert 2e-4 <= cfg.optim.lr <= 2e-2
        assert cfg.optim.name in ("nesterov", "adamw", "rmsprop")
        assert 1 <= cfg.strategy.trainable_stages <= 4
        if cfg.strategy.name == "head-only":
            # The L-BFGS head takes none of these: they are not drawn, so TPE is not misled.
            assert not set(trial.params) & CONDITIONAL_PARAMS
        if cfg.strategy.name == "full":
            assert "trainable_stages" not in trial.params
            assert "backbone_lr_mult" in trial.params
        study.tell(trial, 0.5)
    assert strategies == {"head-only", "partial", "full"}


def test_cli_bad_space_exits_2_before_any_work(images, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: float, low: 0.1, high: 0.001}\n")
    out = tmp_path / "tune"
    result = _invoke("tune", images, "--trials", 1, "--space", space, "--out", out, *_cli_sets())
    _assert_one_line_error(result, EXIT_CONFIG, str(space), "lr", "must be below high")
    assert not out.exists()
    space.write_text("lr: {type: float\nlow: [\n")
    result = _invoke("tune", images, "--trials", 1, "--space", space, "--out", out, *_cli_sets())
    _assert_one_line_error(result, EXIT_CONFIG, "not valid YAML")


def test_cli_space_alias_bomb_is_one_short_line_in_under_2s(images, tmp_path):
    """A categorical's choices that expand to 9**9 strings: refused before anything reprs them."""
    import time

    levels = "abcdefghi"
    lines = ['  - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    pairs = zip(levels, levels[1:-1], strict=False)
    lines += [f"  - &{b} [{','.join([f'*{a}'] * 9)}]" for a, b in pairs]
    space = tmp_path / "space.yaml"
    space.write_text("optimizer:\n  type: categorical\n  choices:\n" + "\n".join(lines) + "\n")
    out = tmp_path / "tune"
    started = time.perf_counter()
    result = _invoke("tune", images, "--trials", 1, "--space", space, "--out", out, *_cli_sets())
    assert time.perf_counter() - started < 2
    _assert_one_line_error(result, EXIT_CONFIG, str(space), "aliases")
    assert len(result.stderr.strip()) <= 300
    assert not out.exists()


# --- lr-find end to end ---------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_lr_find_writes_png_and_json_and_leaves_the_model_file_alone(images, tmp_path):
    from timm.models import create_model as timm_create_model
    from timm.models._hub import save_for_hf

    weights = tmp_path / "weights"
    save_for_hf(timm_create_model("test_resnet"), weights, safe_serialization=True)
    files = {p: (_sha256(p), p.stat().st_mtime_ns) for p in weights.iterdir()}
    out = tmp_path / "plots"
    args = ["lr-find", images, "--model", f"local-dir:{weights}", "--strategy", "partial"]
    result = _invoke(*args, *_cli_sets("model.pretrained=true"), "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)  # stdout is only the JSON document
    assert Path(data["plot"]) == out / "lr_find.png"
    png = Path(data["plot"]).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    for key in ("suggested_lr", "valley", "steepest"):
        assert math.isfinite(data[key]) and 1e-7 <= data[key] <= 10.0
    assert data["suggested_lr"] == data["valley"]
    assert data["strategy"] == "partial" and data["steps"] == len(data["curve"]["lr"]) > 20
    assert {p: (_sha256(p), p.stat().st_mtime_ns) for p in weights.iterdir()} == files
    # The plot is never overwritten: the same command refuses before doing any work.
    again = _invoke(*args, *_cli_sets("model.pretrained=true"), "--out", out, "--json")
    _assert_one_line_error(again, EXIT_RUN_DIR, "already exists")


def test_cli_lr_find_no_pretrained_prints_the_table(images, tmp_path):
    out = tmp_path / "curve.png"
    result = _invoke(
        "lr-find", images, "--model", "test_resnet", "--no-pretrained", *_cli_sets(), "-o", out
    )
    assert result.exit_code == 0, result.stderr
    assert "suggested lr" in result.stdout
    assert str(out) in "".join(line.strip(" │") for line in result.stdout.splitlines())
    assert out.read_bytes().startswith(b"\x89PNG")


# --- tune: resume, workers, best.yaml ---------------------------------------------------------


def _tune_args(data: Path, out: Path, trials: int, *extra: str) -> list[str]:
    return [
        "tune",
        str(data),
        "--trials",
        str(trials),
        "--epochs-per-trial",
        "1",
        "--strategy",
        "partial",
        "--model",
        "test_resnet",
        "--no-pretrained",
        "--out",
        str(out),
        *_cli_sets(),
        *extra,
    ]


def _study(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


def _snapshot(trials) -> list[tuple]:
    return [(t.number, t.state, t.params, t.value, t.datetime_complete) for t in trials]


def test_more_trials_resume_the_study_without_redoing_finished_ones(images, tmp_path):
    out = tmp_path / "tune"
    cfg = _cfg("strategy.name=partial")
    first = tune(images, cfg, TuneSettings(trials=2, epochs_per_trial=1), out=out)
    study = _study(out, first["study"])
    done = _snapshot(_finished(study))
    assert first["trials_run_now"] == 2 and len(done) == 2 and not first["resumed"]
    # The first trial is the config's own values (the baseline the search must beat).
    assert study.trials[0].params["lr"] == cfg.optim.lr
    assert study.trials[0].params["optimizer"] == cfg.optim.name

    again = tune(images, cfg, TuneSettings(trials=2, epochs_per_trial=1), out=out)
    assert again["resumed"] and again["trials_run_now"] == 0
    assert _snapshot(_finished(study)) == done

    more = tune(images, cfg, TuneSettings(trials=4, epochs_per_trial=1), out=out)
    finished = _finished(study)
    assert more["trials_run_now"] == 2 and len(finished) == 4
    assert _snapshot(finished)[:2] == done  # same numbers, params, values, end times
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0000", "0001", "0002", "0003"]
    assert study.user_attrs["lr_center"] == more["lr_center"]  # lr-find ran once, kept

    # Other settings on the same run dir are refused, not mixed into the study.
    with pytest.raises(Exception, match="other settings"):
        tune(images, cfg, TuneSettings(trials=5, epochs_per_trial=2), out=out)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _tlcli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tlcli", *args]


def test_killed_search_resumes_with_the_same_command(images, tmp_path):
    out = tmp_path / "tune"
    args = _tune_args(images, out, 3, "--no-lr-find")
    proc = subprocess.Popen(
        _tlcli(*args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "trials" / "0001").exists():  # trial 0 finished, trial 1 started
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "trial 1 never started"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    study = _study(out, f"tune-{images.name}")
    before = _snapshot(_finished(study))
    assert [t[0] for t in before] == [0]  # killed mid-way: one trial finished
    killed = study.trials[1]
    assert killed.state == optuna.trial.TrialState.RUNNING

    result = _invoke(*args)  # the same command
    assert result.exit_code == 0, result.stderr
    assert "trial 1 was killed" in result.stderr
    assert "tune trials" in result.stdout and "val loss" in result.stdout  # the table
    finished = _finished(study)
    assert len(finished) == 3 and _snapshot(finished)[:1] == before  # trial 0 not redone
    assert study.trials[1].state == optuna.trial.TrialState.FAIL
    # The killed trial's params were queued again, so the baseline/sample is not lost.
    assert study.trials[2].params == killed.params
    assert sorted(t.number for t in finished) == [0, 2, 3]


def test_two_workers_share_one_sqlite_study(images, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    shared = ["--storage", storage, "--study", "ants", "--no-lr-find"]
    procs = [
        subprocess.Popen(
            _tlcli(*_tune_args(images, tmp_path / f"w{i}", 2, *shared, "--json")),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in (1, 2)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr.decode()
    study = optuna.load_study(study_name="ants", storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # 2 + 2: none lost or extra
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    workers = [t.user_attrs["worker"] for t in trials]
    assert sorted(workers.count(w) for w in set(workers)) == [2, 2]
    params = [json.dumps(t.params, sort_keys=True) for t in trials]
    assert len(set(params)) == 4  # no trial ran twice
    assert [t.params["lr"] for t in trials].count(1e-3) == 1  # the baseline is enqueued once
    for i in (1, 2):  # each worker's trial dirs are its own trials
        mine = {f"{t.number:04d}" for t in trials if t.user_attrs["worker"].endswith(f"w{i}")}
        assert {p.name for p in (tmp_path / f"w{i}" / "trials").iterdir()} == mine
    # The worker that finished last wrote the whole study into its table.
    rows = [len((tmp_path / f"w{i}" / "trials.csv").read_text().splitlines()) for i in (1, 2)]
    assert max(rows) == 1 + 4
    summaries = [json.loads(stdout) for stdout, _ in outputs]
    assert sorted(s["trials_run_now"] for s in summaries) == [2, 2]
    assert sum(s["resumed"] for s in summaries) == 0


def test_a_worker_waits_for_the_lr_range_test_running_beside_it(images, tmp_path):
    """Workers sharing a SQLite study run the LR range test once: while another worker holds
    the lock beside the database (here: the test), a new worker waits, then takes the range
    that worker stored instead of running its own test."""
    import fcntl

    stored_center, database = 0.0123, tmp_path / "shared.db"
    storage = f"sqlite:///{database}"
    lock_file = tmp_path / "shared.db.lr-find.lock"
    stderr_file = tmp_path / "worker.stderr"
    with open(lock_file, "a") as lock, stderr_file.open("w") as stderr:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a worker in the middle of its range test
        proc = subprocess.Popen(
            _tlcli(*_tune_args(images, tmp_path / "w", 1, "--storage", storage, "--json")),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + 120
            while "waiting for another worker's LR range test" not in stderr_file.read_text():
                assert proc.poll() is None, stderr_file.read_text()
                assert time.monotonic() < deadline, "the worker did not wait for the lock"
                time.sleep(0.1)
            study = optuna.load_study(study_name="tune-images", storage=storage)
            study.set_user_attr("lr_center", stored_center)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        stdout, _ = proc.communicate(timeout=180)
    log = stderr_file.read_text()
    assert proc.returncode == 0, log
    assert "LR range test (" not in log  # it did not run its own
    lr = optuna.load_study(study_name="tune-images", storage=storage).user_attrs["space"]["lr"]
    assert math.isclose(math.sqrt(lr["low"] * lr["high"]), stored_center, rel_tol=1e-9)
    assert json.loads(stdout)["trials_run_now"] == 1


def test_best_yaml_is_accepted_unchanged_by_finetune(images, tmp_path):
    out = tmp_path / "tune"
    # The trials run 1 epoch; the final run's length is the config's train.epochs.
    result = _invoke(
        *_tune_args(images, out, 2, "--no-lr-find", "--json", "--set", "train.epochs=2")
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    best_yaml = Path(summary["paths"]["best_config"])
    best = summary["best"]
    assert best["val_acc"] == max(r["value"] for r in summary["trials"])
    assert (out / "tune.png").read_bytes().startswith(b"\x89PNG")
    assert len((out / "trials.csv").read_text().splitlines()) == 1 + 2
    text = best_yaml.read_text()
    run = tmp_path / "final"
    result = _invoke("finetune", images, "--config", best_yaml, "--out", run, "--json")
    assert result.exit_code == 0, result.stderr
    assert best_yaml.read_text() == text
    used = yaml.safe_load((run / "config.yaml").read_text())
    assert used == yaml.safe_load(text)  # every key taken as is
    assert used["optim"]["lr"] == best["params"]["lr"]
    assert used["optim"]["name"] == best["params"]["optimizer"]
    assert used["train"]["epochs"] == 2  # the final run's length, not the trials'
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 2


def test_best_trial_breaks_accuracy_ties_on_val_loss():
    from optuna.trial import TrialState, create_trial

    from tlcli.tune.search import best_trial

    study = optuna.create_study(direction="maximize")
    study.add_trials(
        [
            create_trial(value=0.95, user_attrs={"val_loss": 0.5}),
            create_trial(value=0.90, user_attrs={"val_loss": 0.1}),
            create_trial(value=0.95, user_attrs={"val_loss": 0.2}),
            create_trial(value=0.95, user_attrs={"val_loss": 0.2}),
            create_trial(state=TrialState.PRUNED, intermediate_values={1: 0.99}),
        ]
    )
    assert best_trial(study.trials).number == 2  # 0.95 with the lowest loss, the earliest
    assert best_trial(study.trials[4:]) is None  # a pruned trial is never the best


def test_lr_range_is_centred_between_the_two_suggestions_and_holds_both():
    from tlcli.tune.search import LR_CENTER_RANGE, lr_range_center

    center = lr_range_center(valley=1.4e-4, steepest=2.8e-3)
    assert center == pytest.approx(math.sqrt(1.4e-4 * 2.8e-3))
    lr = default_space(center)["lr"]
    assert lr.low < 1.4e-4 < 2.8e-3 < lr.high and lr.log
    assert lr_range_center(1e-9, 1e-8) == LR_CENTER_RANGE[0]  # clamped to sane LRs
    assert lr_range_center(5.0, 10.0) == LR_CENTER_RANGE[1]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_a_trial_of_a_silent_remote_worker_is_failed_and_queued_again(tmp_path, monkeypatch):
    """fail_dead_trials only sees this host's processes; a worker on another machine that
    dies is found by Optuna's heartbeat, and its parameters must be queued again too."""
    import tlcli.tune.search as search

    monkeypatch.setattr(search, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(search, "GRACE_SECONDS", 1)
    storage = search.open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)})
    trial.set_user_attr("host", "another-machine")
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)  # silent for longer than the grace period
    optuna.storages.fail_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[trial.number] == optuna.trial.TrialState.FAIL
    (retry,) = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    assert retry.system_attrs["fixed_params"] == {"lr": trial.params["lr"]}  # run next
    assert retry.user_attrs["note"] == f"retry of trial {trial.number} (its worker stopped)"
