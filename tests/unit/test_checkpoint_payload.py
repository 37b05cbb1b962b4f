"""tlcli.checkpoint.Checkpoint is the one reader and writer of best.pt and last.pt payloads:
what finetune writes reads back into it and out again unchanged, and no other module of
tlcli/ spells a checkpoint-only key."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from corpus import make_image_folder
from typer.testing import CliRunner

from tlcli.checkpoint import FORMAT, Checkpoint, TrainState, load_checkpoint
from tlcli.cli import app

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "tlcli"
HOME = "checkpoint.py"
# Keys only a checkpoint has (classes, plan, temperature, ... are summary.json, split.json
# and ONNX metadata keys too).
CHECKPOINT_ONLY_KEYS = {
    "state_dict",
    "ema_state_dict",
    "train_state",
    "probe_state_dict",
    "format_version",
    "best_val_acc",
}
TINY = [
    "--model", "test_resnet", "--no-pretrained", "--image-size", "64", "--batch-size", "8",
    "--device", "cpu", "--workers", "1", "--epochs", "2", "--strategy", "partial",
    "--trainable-stages", "1",
]  # fmt: skip


def same(a: object, b: object) -> bool:
    """Equal payloads: the same keys, equal tensors, equal plain values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finetune run dir: LP-FT (a probe in last.pt), EMA, calibrated (a temperature)."""
    base = tmp_path_factory.mktemp("payload")
    data = make_image_folder(base / "data", {"red": 6, "blue": 6})
    result = CliRunner().invoke(
        app, ["finetune", str(data), *TINY, "--ema", "--out", str(base / "run")]
    )
    assert result.exit_code == 0, result.output[-2000:]
    return base / "run"


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_what_finetune_writes_reads_into_a_checkpoint_and_back_unchanged(run, name):
    payload = load_checkpoint(run / name)
    header = {k: payload.pop(k) for k in ("format", "format_version")}
    assert header["format"] == FORMAT
    ckpt = Checkpoint.from_payload(payload)
    assert same(ckpt.to_payload(), payload)
    assert ckpt.ema_state_dict is not None
    # calibrate_best writes T into best.pt; last.pt carries the train state instead.
    assert (ckpt.temperature is not None) == (name == "best.pt")
    assert (ckpt.train_state is not None) == (name == "last.pt")
    if name == "last.pt":
        assert ckpt.train_state.probe_state_dict is not None  # LP-FT's probe, for WiSE-FT


def test_a_missing_or_broken_entry_reads_as_none_for_the_checks_to_refuse():
    ckpt = Checkpoint.from_payload({"model": "not a mapping", "train_state": [1, 2]})
    assert ckpt.architecture is None and ckpt.classes is None and ckpt.train_state is None
    assert ckpt.temperature is None and ckpt.best_val_acc is None
    assert Checkpoint.from_payload({"metrics": [0.5]}).best_val_acc == "?"  # refused by evaluate


def test_a_train_state_round_trips():
    state = TrainState(optimizer={"state": {}}, loop={"epoch": 1}, rng={"torch": 1}, swa=None)
    assert TrainState.from_payload(state.to_payload()) == state


def string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and n.value in CHECKPOINT_ONLY_KEYS
    }


def test_checkpoint_only_keys_are_spelled_in_one_module():
    spelled = {
        path.relative_to(PACKAGE_ROOT).as_posix(): string_constants(path)
        for path in PACKAGE_ROOT.rglob("*.py")
    }
    elsewhere = {name: keys for name, keys in spelled.items() if keys and name != HOME}
    assert not elsewhere, f"read or write these through tlcli.checkpoint.Checkpoint: {elsewhere}"
    assert spelled[HOME] == CHECKPOINT_ONLY_KEYS
