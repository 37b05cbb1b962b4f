"""`finetune` end to end on tiny random-init timm models and tiny generated images.

What must hold for every strategy: frozen weights AND BatchNorm buffers come out of training
bit-identical, trained ones move, the run dir is complete and its checkpoints load safely.
Then the CLI contract (--json, exit codes), resume after Ctrl-C, and the bad-input corpus.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from corpus import SKIPPED_AT_DECODE
from typer.testing import CliRunner

from tlcli.checkpoint import load_checkpoint
from tlcli.cli import app
from tlcli.config import load_config
from tlcli.errors import (
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_INTERRUPTED,
    EXIT_MODEL,
    EXIT_RUN_DIR,
    Interrupted,
)
from tlcli.inference import build_model
from tlcli.models import create_model
from tlcli.progress import NullReporter
from tlcli.strategy import model_stages
from tlcli.train.run import finetune

# Tiny and fast: random init (no downloads), 64 px inputs, 8 images per batch, one process.
TINY = [
    "model.pretrained=false",
    "data.image_size=64",
    "data.batch_size=8",
    "data.workers=1",
    "train.device=cpu",
    "train.epochs=2",
]
RUN_FILES = (
    "config.yaml",
    "run.json",
    "split.json",
    "metrics.csv",
    "best.pt",
    "last.pt",
    "summary.json",
    "curves.png",
    "report.html",
)
JSON_KEYS = ("val_acc", "best_epoch", "strategy", "trainable_params", "total_params", "skipped")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Two colour-coded classes, 8 images each (a flat folder: the split is made)."""
    from corpus import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("data") / "images", {"red": 8, "blue": 8})


def _cfg(model: str, *sets: str):
    return load_config(None, [*TINY, f"model.name={model}", *sets])


def _initial_state(cfg, num_classes: int) -> dict[str, torch.Tensor]:
    """The weights finetune starts from: it seeds torch, then creates the model."""
    torch.manual_seed(cfg.train.seed)
    model = create_model(cfg.model.name, num_classes, pretrained=False)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _frozen_and_trained_keys(model_name: str, num_classes: int, plan: dict) -> tuple[set, set]:
    """state_dict keys (parameters and buffers) of frozen modules / of the other modules.

    A module is frozen when all its parameters are in frozen stages; its buffers (BatchNorm
    running_mean, running_var, num_batches_tracked) are frozen with it.
    """
    model = create_model(model_name, num_classes, pretrained=False)
    trainable = {s["name"]: s["trainable"] for s in plan["stages"]}
    frozen_params = {
        n for stage in model_stages(model) if not trainable[stage.name] for n in stage.params
    }
    params_of: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        params_of.setdefault(name.rpartition(".")[0], []).append(name)
    frozen_modules = {m for m, names in params_of.items() if set(names) <= frozen_params}
    keys = set(model.state_dict())
    frozen = {k for k in keys if k.rpartition(".")[0] in frozen_modules}
    return frozen, keys - frozen


def _assert_frozen_bit_identical(
    ckpt: dict, initial: dict, model_name: str, plan: dict, trained: bool = True
) -> None:
    """Frozen tensors unchanged; with trained, every trainable stage moved."""
    must_move = trained
    frozen, trained = _frozen_and_trained_keys(model_name, len(ckpt["classes"]), plan)
    state = ckpt["state_dict"]
    assert set(state) == set(initial)
    moved_frozen = [k for k in frozen if not torch.equal(state[k], initial[k])]
    assert not moved_frozen, f"frozen tensors changed: {sorted(moved_frozen)[:5]}"
    bn_buffers = [k for k in frozen if k.endswith(("running_mean", "running_var"))]
    if plan["strategy"] != "full":
        assert bn_buffers  # the check above covered BatchNorm statistics
    if not must_move:
        return
    moved = {k for k in trained if not torch.equal(state[k], initial[k])}
    assert moved, "nothing trained"
    # Every trained stage moved (the head, and each retrained backbone stage).
    model = create_model(model_name, len(ckpt["classes"]), pretrained=False)
    for stage, stage_plan in zip(model_stages(model), plan["stages"], strict=True):
        if stage_plan["trainable"]:
            assert any(n in moved for n in stage.params), f"stage {stage.name} did not train"


def _read_metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def _assert_run_dir(run: Path, summary: dict, epochs: int) -> None:
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    rows = _read_metrics(run)
    lp_ft = summary["strategy"] != "head-only" and summary["probe_val_acc"] is not None
    first = 0 if lp_ft else 1  # LP-FT: the linear probe is epoch 0
    assert [int(r["epoch"]) for r in rows] == list(range(first, epochs + 1))
    assert json.loads((run / "summary.json").read_text())["val_acc"] == summary["val_acc"]
    assert summary["epochs_run"] == epochs
    assert 0.0 <= summary["val_acc"] <= 1.0
    assert first <= summary["best_epoch"] <= epochs
    for name in ("best.pt", "last.pt"):
        data = torch.load(run / name, map_location="cpu", weights_only=True)  # no pickled code
        assert data["format"] == "tlcli-checkpoint"
    assert "train_state" not in torch.load(run / "best.pt", weights_only=True)


@pytest.mark.parametrize(
    "model_name, sets, epochs",
    [
        ("test_resnet", ["strategy.name=head-only"], 1),  # L-BFGS: one "epoch"
        ("test_efficientnet", ["strategy.name=head-only"], 1),
        ("test_resnet", ["strategy.name=head-only", "strategy.head_fit=epochs"], 2),
        ("test_resnet", ["strategy.name=partial", "strategy.trainable_stages=2"], 2),
        ("test_efficientnet", ["strategy.name=partial", "strategy.trainable_stages=1"], 2),
        ("test_efficientnet", ["strategy.name=full", "train.ema=true"], 2),
    ],
)
def test_strategy_trains_only_what_its_plan_says(images, tmp_path, model_name, sets, epochs):
    cfg = _cfg(model_name, *sets)
    initial = _initial_state(cfg, 2)
    run = tmp_path / "run"
    summary = finetune(images, cfg, out=run)
    _assert_run_dir(run, summary, epochs)
    best = load_checkpoint(run / "best.pt")
    assert best["plan"]["strategy"] == cfg.strategy.name == summary["strategy"]
    # LP-FT: best.pt may be the probe (epoch 0), which trained the head alone.
    probe_kept = summary["best_epoch"] == 0 and summary["strategy"] != "head-only"
    _assert_frozen_bit_identical(best, initial, model_name, best["plan"], not probe_kept)
    _assert_frozen_bit_identical(
        load_checkpoint(run / "last.pt"), initial, model_name, best["plan"]
    )
    trainable = sum(s["num_params"] for s in best["plan"]["stages"] if s["trainable"])
    assert summary["trainable_params"] == trainable
    model = create_model(model_name, 2, pretrained=False)
    assert summary["total_params"] == sum(p.numel() for p in model.parameters())
    # The checkpoint alone rebuilds the network (no config, no network access).
    model, which = build_model(best)
    assert which == ("ema" if best["best_weights"] == "ema" else "raw")
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2)


def test_head_only_lbfgs_separates_colour_coded_classes(images, tmp_path):
    summary = finetune(images, _cfg("test_resnet", "strategy.name=head-only"), out=tmp_path / "r")
    assert summary["val_acc"] == 1.0  # red vs blue: trivially separable on random features


# --- CLI ------------------------------------------------------------------------------------

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _assert_one_line_error(result, code: int, *words: str, only_line: bool = True) -> None:
    """Exit code, nothing on stdout, and the error as one line on stderr (the last one)."""
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert len(lines) == 1 or not only_line, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[-1], lines[-1]


def _cli_sets(model: str = "test_resnet") -> list[str]:
    return [a for s in [*TINY, f"model.name={model}"] for a in ("--set", s)]


def test_cli_json_prints_only_json(images, tmp_path):
    run = tmp_path / "run"
    result = _invoke(
        "finetune",
        images,
        *_cli_sets(),
        "--strategy",
        "partial",
        "--epochs",
        "1",
        "--out",
        run,
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)  # nothing but the JSON document on stdout
    for key in JSON_KEYS:
        assert key in data, key
    # LP-FT: epoch 0 is the probe; on colour-coded classes it is already perfect on val.
    assert data["strategy"] == "partial" and data["best_epoch"] in (0, 1)
    assert data["probe_val_acc"] is not None
    assert 0 < data["trainable_params"] < data["total_params"]
    assert "history" not in data
    assert "epoch" in result.stderr  # progress and epoch rows go to stderr
    _assert_run_dir(run, data, 1)


def test_cli_refuses_an_existing_run_dir_and_leaves_it_alone(images, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.md").write_text("my earlier run")
    result = _invoke("finetune", images, *_cli_sets(), "--strategy", "head-only", "--out", run)
    _assert_one_line_error(result, EXIT_RUN_DIR, str(run), "--resume")
    assert [p.name for p in run.iterdir()] == ["notes.md"]
    assert (run / "notes.md").read_text() == "my earlier run"


def test_cli_no_images_exits_3(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    result = _invoke("finetune", tmp_path / "empty", *_cli_sets(), "--out", tmp_path / "run")
    _assert_one_line_error(result, EXIT_DATA, "no images")


def test_cli_unknown_model_exits_4(images, tmp_path):
    result = _invoke(
        "finetune", images, *_cli_sets(), "--model", "no_such_net_xyz", "--out", tmp_path / "r"
    )
    _assert_one_line_error(result, EXIT_MODEL, "no_such_net_xyz")


def test_cli_failed_start_leaves_the_run_dir_reusable(images, tmp_path):
    run = tmp_path / "run"
    failed = _invoke("finetune", images, *_cli_sets(), "--model", "no_such_net_xyz", "--out", run)
    assert failed.exit_code == EXIT_MODEL
    assert not run.exists() or not any(run.iterdir())  # nothing that blocks a retry
    retry = _invoke("finetune", images, *_cli_sets(), "--strategy", "head-only", "--out", run)
    assert retry.exit_code == 0, retry.stderr


@pytest.mark.parametrize("item", ["optim.lr=fast", "optim.lrr=0.1", "lr=0.1"])
def test_cli_bad_set_exits_2(images, tmp_path, item):
    result = _invoke("finetune", images, *_cli_sets(), "--set", item, "--out", tmp_path / "r")
    _assert_one_line_error(result, EXIT_CONFIG)
    assert not (tmp_path / "r").exists()  # nothing created before the config is valid


def test_cli_interrupt_exits_130_and_says_how_to_resume(images, tmp_path, monkeypatch):
    from tlcli import render

    def interrupt(self, row):
        if row["epoch"] >= 1:  # LP-FT's probe is row 0; stop as the first trained epoch ends
            raise KeyboardInterrupt

    monkeypatch.setattr(render.RichReporter, "epoch", interrupt)
    run = tmp_path / "run"
    result = _invoke("finetune", images, *_cli_sets(), "--strategy", "partial", "--out", run)
    # Progress notes come first on stderr; the error is the last line.
    _assert_one_line_error(result, EXIT_INTERRUPTED, "--resume", str(run), only_line=False)
    assert load_checkpoint(run / "last.pt")["metrics"]["epoch"] == 1


def test_cli_diverged_loss_exits_2_and_names_the_learning_rate(images, tmp_path, monkeypatch):
    """A loss that becomes nan in epoch 2 (as a too-high LR makes it): one line naming the LR
    and lr-find, exit 2, and last.pt still holds epoch 1."""
    from tlcli.train import loop

    real, calls = loop.loss_fn, []

    def loss_fn(logits, targets, label_smoothing, balance=None):
        calls.append(1)
        loss = real(logits, targets, label_smoothing, balance)
        return loss * float("nan") if len(calls) > 2 else loss  # 2 steps per epoch here

    monkeypatch.setattr(loop, "loss_fn", loss_fn)
    run = tmp_path / "run"
    args = ("--strategy", "partial", "--epochs", "3", "--lr", "0.002", "--out", run)
    result = _invoke("finetune", images, *_cli_sets(), *args)
    _assert_one_line_error(
        result, EXIT_CONFIG, "training diverged", "nan", "--lr 0.002", "lr-find", only_line=False
    )
    assert load_checkpoint(run / "last.pt")["metrics"]["epoch"] == 1


# --- resume ---------------------------------------------------------------------------------


class InterruptAfter(NullReporter):
    """Raises KeyboardInterrupt (as Ctrl-C would) when epoch `after` is reported."""

    def __init__(self, after: int):
        self.after = after

    def epoch(self, row):
        if row["epoch"] == self.after:
            raise KeyboardInterrupt


def _without_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_resume_finishes_the_run_exactly_as_an_uninterrupted_one(images, tmp_path):
    cfg = _cfg("test_resnet", "strategy.name=partial", "train.epochs=3", "train.ema=true")
    run = tmp_path / "interrupted"
    with pytest.raises(Interrupted) as excinfo:
        finetune(images, cfg, out=run, reporter=InterruptAfter(2))
    assert excinfo.value.exit_code == EXIT_INTERRUPTED
    assert f"--resume {run}" in excinfo.value.message
    last = load_checkpoint(run / "last.pt")
    assert last["metrics"]["epoch"] == 2 and last["train_state"]["loop"]["epoch"] == 2
    assert [int(r["epoch"]) for r in _read_metrics(run)] == [0, 1, 2]  # 0: the LP-FT probe

    resumed = finetune(None, load_config(), resume=run)
    assert resumed["epochs_run"] == 3
    assert [int(r["epoch"]) for r in _read_metrics(run)] == [0, 1, 2, 3]

    straight = finetune(images, cfg, out=tmp_path / "straight")
    assert _without_time(resumed["history"]) == _without_time(straight["history"])
    for key in ("val_acc", "best_epoch", "best_weights", "num_train", "num_val"):
        assert resumed[key] == straight[key], key
    a = load_checkpoint(run / "last.pt")
    b = load_checkpoint(tmp_path / "straight" / "last.pt")
    for name in ("state_dict", "ema_state_dict"):
        assert all(torch.equal(a[name][k], b[name][k]) for k in b[name]), name


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path):
    from tlcli.errors import RunDirError

    with pytest.raises(RunDirError):
        finetune(None, load_config(), resume=tmp_path)


# --- bad inputs -----------------------------------------------------------------------------


def test_bad_corpus_trains_and_names_every_skipped_file(bad_corpus, tmp_path):
    root, outcomes = bad_corpus
    run = tmp_path / "run"
    result = _invoke(
        "finetune",
        root,
        *_cli_sets(),
        "--strategy",
        "partial",
        "--trainable-stages",
        "1",
        "--epochs",
        "1",
        "--out",
        run,
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["epochs_run"] == 1
    skipped = {
        Path(s["path"]).relative_to(root).as_posix(): s["reason"] for s in summary["skipped"]
    }
    expected = {rel for rel, outcome in outcomes.items() if outcome == "skipped"}
    assert set(skipped) == expected
    assert all(skipped[rel] for rel in expected)
    ok = [rel for rel, outcome in outcomes.items() if outcome == "ok"]
    assert summary["num_train"] + summary["num_val"] == len(ok)
    assert summary["classes"] == ["ants", "bees", "crème brûlée"]
    # Files only the decoder catches are warned about by their exact name ([...] is not markup).
    for rel in SKIPPED_AT_DECODE:
        assert f"skipped {root / rel}:" in result.stderr.replace("\n", "")
