"""The bad-input corpus through the real CLI: every case ends as docs/reliability.md says.

Either a clean run that names each bad file, or one `error:` line with the documented exit
code. Never a traceback, never a hang, never a file of the user's changed, never a run dir
overwritten. All inputs are generated in tmp_path (tests/corpus.py); the model is the tiny
random-init `test_resnet`.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus import (
    ANIMATED_GIF,
    BAD_MANIFEST_CASES,
    BRACKETS_JPG,
    CMYK_JPEG,
    EMPTY_CLASS,
    ESCAPE_JPG,
    EXIF_JPEG,
    FS_SKIP_REASONS,
    GRAY16_PNG,
    LA_PNG,
    LOCKED_FILE,
    LOCKED_FOLDER,
    NAME_SKIP_REASONS,
    NEWLINE_JPG,
    NON_UTF8_JPG,
    ONE_BIT_PNG,
    PALETTE_PNG,
    PANORAMA_PNG,
    PNG_NAMED_JPG,
    RGBA_PNG,
    RUN_DIR_CASES,
    SKIP_REASONS,
    STRIP_PNG,
    TRUNCATED_JPEG,
    UNICODE_JPG,
    add_filesystem_cases,
    add_hostile_names,
    make_bad_image_folder,
    make_image_folder,
    tree_digest,
    unlock,
)
from typer.testing import CliRunner

from tlcli.cli import app
from tlcli.errors import (
    EXIT_CHECKPOINT,
    EXIT_CONFIG,
    EXIT_DATA,
    EXIT_RUN_DIR,
    printable,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
TINY = [
    "--model", "test_resnet", "--no-pretrained", "--image-size", "64", "--batch-size", "8",
    "--device", "cpu", "--workers", "1", "--epochs", "1",
]  # fmt: skip
CASE_TIMEOUT = 120  # s: far above any case's time; reaching it is a hang
runner = CliRunner()

# The corpus: case -> (where it is, expected outcome, exit code). docs/reliability.md has a
# row for each; test_every_case_is_documented checks they agree.
MESSY_FOLDER_CASES = {
    "truncated-jpeg": (TRUNCATED_JPEG, "skipped", 0),
    "zero-byte-file": ("ants/empty.jpg", "skipped", 0),
    "html-saved-as-jpg": ("bees/page.jpg", "skipped", 0),
    "text-saved-as-jpg": ("ants/text.jpg", "skipped", 0),
    "not-an-image-extension": ("bees/notes.txt", "skipped", 0),
    "decompression-bomb": ("crème brûlée/bomb.png", "skipped", 0),
    "extreme-aspect-strip": (STRIP_PNG, "skipped", 0),
    "wide-panorama": (PANORAMA_PNG, "trained", 0),
    "png-named-jpg": (PNG_NAMED_JPG, "trained", 0),
    "cmyk-jpeg": (CMYK_JPEG, "trained", 0),
    "16-bit-gray-png": (GRAY16_PNG, "trained", 0),
    "1-bit-png": (ONE_BIT_PNG, "trained", 0),
    "rgba-transparent-png": (RGBA_PNG, "trained", 0),
    "palette-transparent-png": (PALETTE_PNG, "trained", 0),
    "gray-alpha-png": (LA_PNG, "trained", 0),
    "animated-gif": (ANIMATED_GIF, "trained", 0),
    "exif-rotated-jpeg": (EXIF_JPEG, "trained", 0),
    "unicode-and-spaces-in-names": (UNICODE_JPG, "trained", 0),
    "markup-in-file-name": (BRACKETS_JPG, "trained", 0),
    "hidden-files": ("ants/.hidden.jpg", "ignored", 0),
    "symlink-loop-file": ("ants/loop_a.jpg", "skipped", 0),
    "symlink-loop-class-folder": ("all photos", "skipped", 0),
    "symlink-to-folder": ("bees/more ants", "skipped", 0),
    "unreadable-file": (LOCKED_FILE, "skipped", 0),
    "unreadable-folder": (LOCKED_FOLDER, "skipped", 0),
    "empty-class-folder": (EMPTY_CLASS, "left out", 0),
    "non-utf8-file-name": (NON_UTF8_JPG, "trained", 0),
    "escape-sequence-in-file-name": (ESCAPE_JPG, "trained", 0),
    "newline-in-file-name": (NEWLINE_JPG, "skipped", 0),
}
ERROR_CASES = {
    # case: (exit code, words of the error line)
    "single-class": (EXIT_DATA, ["only one class", "two class folders"]),
    "class-with-one-image": (EXIT_DATA, ["'lonely' has 1 usable image", "val/"]),
    "val-class-missing-from-train": (EXIT_DATA, ["val/ has classes that train/ does not: extra"]),
    "no-images": (EXIT_DATA, ["no images found"]),
    "missing-data-folder": (EXIT_DATA, ["does not exist"]),
    "config-unknown-key": (EXIT_CONFIG, ["unknown key optim.lrr", "valid:"]),
    "config-wrong-type": (EXIT_CONFIG, ["optim.lr must be a float", "'fast'"]),
    "config-not-yaml": (EXIT_CONFIG, ["not valid YAML at line"]),
    "config-missing-file": (EXIT_CONFIG, ["does not exist"]),
    "negative-epochs": (EXIT_CONFIG, ["train.epochs=-1 is out of range"]),
    "zero-batch-size": (EXIT_CONFIG, ["data.batch_size=0 is out of range"]),
    "absurd-learning-rate": (EXIT_CONFIG, ["optim.lr=1000000000.0 is out of range"]),
    "absurd-image-size": (EXIT_CONFIG, ["data.image_size=1000000 is out of range"]),
    "val-split-above-one": (EXIT_CONFIG, ["data.val_split=2.0 is out of range"]),
    "negative-max-pixels": (EXIT_CONFIG, ["data.max_pixels=-5 is out of range"]),
    "unknown-set-key": (EXIT_CONFIG, ["unknown key train.epoch"]),
    "checkpoint-of-other-classes": (EXIT_CHECKPOINT, ["does not know: cat, dog"]),
    "non-tlcli-pt": (EXIT_CHECKPOINT, ["not a tlcli checkpoint"]),
    "malicious-pickle-torch-save": (EXIT_CHECKPOINT, ["needs code to unpickle"]),
    "malicious-pickle-pickle-dump": (EXIT_CHECKPOINT, ["needs code to unpickle"]),
    "truncated-checkpoint": (EXIT_CHECKPOINT, ["not a readable checkpoint"]),
    "empty-checkpoint": (EXIT_CHECKPOINT, ["not a readable checkpoint"]),
    "existing-run-dir": (EXIT_RUN_DIR, ["already exists and is not empty", "--resume"]),
    "resume-a-data-folder": (EXIT_RUN_DIR, ["not a resumable run dir"]),
    "resume-before-first-checkpoint": (EXIT_RUN_DIR, ["before its first checkpoint"]),
    "config-alias-bomb": (EXIT_CONFIG, ["over 10,000 values", "aliases"]),
    "space-alias-bomb": (EXIT_CONFIG, ["over 10,000 values", "aliases"]),
    "set-huge-value": (EXIT_CONFIG, ["optim.lr must be a float", "xxx...xxx"]),
    "predict-missing-path": (EXIT_DATA, ["no readable images in"]),
    "predict-empty-folder": (EXIT_DATA, ["no readable images in"]),
    "predict-only-non-images": (EXIT_DATA, ["no readable images in", "1 file(s) skipped"]),
    "predict-only-truncated": (EXIT_DATA, ["no readable images in", "2 file(s) skipped"]),
    "evaluate-only-truncated": (EXIT_DATA, ["no readable images in", "4 file(s) skipped"]),
    "recommend-only-truncated": (EXIT_DATA, ["no readable images in"]),
    "export-check-images-unreadable": (EXIT_DATA, ["no readable images in"]),
    "val-and-test-only": (EXIT_DATA, ["no train/ folder"]),
    "split-and-class-folders-mixed": (EXIT_DATA, ["(train/)", "(car/)", "not both"]),
    "two-val-folders": (EXIT_DATA, ["2 val folders", "keep one"]),
}
# Layouts that look like a split but are not: a clean run (test_layout_case_trains).
LAYOUT_CASES = {"class-named-train": 0, "class-named-val": 0}
# Typer rejects these before tlcli runs: exit 2 and its usage box (several lines).
USAGE_CASES = {
    "epochs-not-a-number": (["--epochs", "abc"], "Invalid value for '--epochs'"),
    "evaluate-batch-size-zero": (None, "Invalid value for '--batch-size'"),
}


@pytest.fixture(autouse=True)
def no_hang():
    """Fail a case that runs past CASE_TIMEOUT instead of hanging the suite."""

    def hang(signum, frame):
        raise TimeoutError(f"no result after {CASE_TIMEOUT}s: a hang")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(CASE_TIMEOUT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def invoke(*args: object):
    """The CLI in process; an unexpected exception propagates (a crash fails the test)."""
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_error(result, code: int, words: list[str]) -> str:
    """The exit code, nothing on stdout, and one `error:` line on stderr with the words."""
    assert "Traceback" not in result.output
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in lines[-1], (word, lines[-1])
    return lines[-1]


# --- one messy folder: a clean run that names every bad file --------------------------------


@pytest.fixture
def messy_folder(tmp_path, monkeypatch):
    root = tmp_path / "messy photos"
    outcomes = make_bad_image_folder(root) | add_filesystem_cases(root) | add_hostile_names(root)
    if os.geteuid() == 0:
        simulate_permissions(root, monkeypatch)
    yield root, outcomes
    unlock(root)


def simulate_permissions(root: Path, monkeypatch) -> None:
    """As root, chmod 000 stops no read: make the OS answer as it does to a user."""
    from PIL import Image

    locked_file, locked_folder = root / LOCKED_FILE, root / LOCKED_FOLDER
    real_open, real_scandir = Image.open, os.scandir

    def image_open(fp, *args, **kwargs):
        if isinstance(fp, str | os.PathLike) and Path(fp) == locked_file:
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *args, **kwargs)

    def scandir(path="."):
        if Path(path) == locked_folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(Image, "open", image_open)
    monkeypatch.setattr(os, "scandir", scandir)


def test_messy_folder_trains_and_names_every_bad_file(messy_folder, tmp_path):
    root, outcomes = messy_folder
    before = tree_digest(root)
    run = tmp_path / "run"
    result = invoke("finetune", root, *TINY, "--strategy", "partial", "--out", run)
    assert "Traceback" not in result.output
    assert result.exit_code == 0, result.stderr
    assert tree_digest(root) == before, "a user's file was changed"

    summary = json.loads((run / "summary.json").read_text())
    skipped = {
        Path(s["path"]).relative_to(root).as_posix(): s["reason"] for s in summary["skipped"]
    }
    expected_skips = {**SKIP_REASONS, **FS_SKIP_REASONS, **NAME_SKIP_REASONS}
    assert set(skipped) == set(expected_skips)
    for rel, words in expected_skips.items():
        assert words.lower() in skipped[rel].lower(), (rel, skipped[rel])
        # ...and named on the terminal, with its reason, exactly as it is spelled.
        assert printable(f"skipped {root / rel}: {skipped[rel]}") in result.stderr, rel
    # Names are printed escaped: nothing clears the screen, no line is forged.
    assert "\x1b" not in result.output
    assert not [line for line in result.stderr.splitlines() if line.startswith("error")]
    split = json.loads((run / "split.json").read_text())
    # Split at scan time; the decoder then drops what it cannot decode (the truncated JPEG).
    trained = {rel for rows in split["splits"].values() for rel, _ in rows} - set(skipped)
    assert summary["num_train"] + summary["num_val"] == len(trained)
    assert trained == {rel for rel, outcome in outcomes.items() if outcome == "ok"}
    assert summary["classes"] == ["ants", "bees", "crème brûlée"]
    assert f"class folder '{EMPTY_CLASS}' has no usable images and is left out" in result.stderr
    for case, (rel, outcome, code) in MESSY_FOLDER_CASES.items():
        assert code == 0
        if outcome == "trained":
            assert rel in trained, case
        elif outcome == "skipped":
            assert rel in skipped, case
        elif outcome == "ignored":
            assert rel not in trained and rel not in skipped and rel not in result.stderr, case
        else:
            assert outcome == "left out" and rel in result.stderr, case


# --- errors: one line, the documented exit code, nothing changed ----------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny finished run (classes red, blue) for the checkpoint cases."""
    base = tmp_path_factory.mktemp("corpus-trained")
    data = make_image_folder(base / "data", {"red": 4, "blue": 4})
    run = base / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLCLI_CACHE_DIR", str(base / "cache"))
        result = invoke("finetune", data, *TINY, "--strategy", "head-only", "--out", run)
    assert result.exit_code == 0, result.stderr
    return {"data": data, "run": run, "best": run / "best.pt"}


class PlantsMarker:
    """Unpickling this would create a file: the proof that pickled code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def build_error_case(case: str, tmp: Path, trained: dict) -> tuple[list, list[Path]]:
    """The command line of an error case, and the user's paths it must leave untouched."""
    good = make_image_folder(tmp / "good", {"red": 4, "blue": 4})
    out = ["--out", tmp / "new-run"]
    finetune = ["finetune", good, *TINY, *out]
    config = tmp / "my config.yaml"
    pt = tmp / "file.pt"
    folder_cases = {
        "single-class": {"counts": {"only": 5}},
        "class-with-one-image": {"counts": {"a": 5, "lonely": 1}},
        "val-class-missing-from-train": {
            "counts": {"a": 3, "b": 3},
            "layout": "split",
            "val_counts": {"a": 2, "b": 2, "extra": 2},
        },
    }
    if case in folder_cases:
        data = make_image_folder(tmp / "data", **folder_cases[case])
        return ["finetune", data, *TINY, *out], [data]
    if case == "no-images":
        (tmp / "data" / "a").mkdir(parents=True)
        (tmp / "data" / "a" / "readme.txt").write_text("no pictures here")
        return ["finetune", tmp / "data", *TINY, *out], [tmp / "data"]
    if case == "missing-data-folder":
        return ["finetune", tmp / "nowhere", *TINY, *out], []
    layouts = {
        "val-and-test-only": [("val", {"a": 2, "b": 2}), ("test", {"a": 2, "b": 2})],
        "split-and-class-folders-mixed": [("train", {"a": 2, "b": 2}), ("", {"car": 2})],
        "two-val-folders": [(s, {"a": 2, "b": 2}) for s in ("train", "val", "validation")],
    }
    if case in layouts:
        for sub, counts in layouts[case]:
            make_image_folder(tmp / "data" / sub, counts)
        return ["finetune", tmp / "data", *TINY, *out], [tmp / "data"]
    unreadable = tmp / "broken"
    for name in ("red", "blue"):
        for i in range(2):
            (unreadable / name).mkdir(parents=True, exist_ok=True)
            (unreadable / name / f"{i}.png").write_bytes(_truncated_png())
    readable_cases = {
        "predict-missing-path": ["predict", trained["best"], tmp / "typo"],
        "predict-empty-folder": ["predict", trained["best"], tmp],
        "predict-only-non-images": ["predict", trained["best"], config],
        "predict-only-truncated": ["predict", trained["best"], unreadable / "red"],
        "evaluate-only-truncated": ["evaluate", trained["best"], unreadable],
        "recommend-only-truncated": [
            "recommend", unreadable, "--model", "test_resnet", "--set", "model.pretrained=false",
        ],
        "export-check-images-unreadable": [
            "export", trained["best"], "--format", "torchscript", "--out", tmp / "new-run" / "m.pt",
            "--check-images", unreadable,
        ],
    }  # fmt: skip
    if case in readable_cases:
        if case == "predict-empty-folder":
            shutil.rmtree(unreadable)
            (tmp / "good").rename(tmp / ".good")  # hidden: the folder holds nothing to read
            return [*readable_cases[case]], []
        if case == "predict-only-non-images":
            config.write_text("train:\n  epochs: 1\n")
        return readable_cases[case], [unreadable, trained["best"]]
    config_texts = {
        "config-alias-bomb": "optim:\n  lr:\n" + alias_bomb(),
        "config-unknown-key": "optim:\n  lrr: 0.1\n",
        "config-wrong-type": "optim:\n  lr: fast\n",
        "config-not-yaml": "train: [1, 2\n",
    }
    if case in config_texts:
        config.write_text(config_texts[case])
        return [*finetune, "--config", config], [good, config]
    if case == "config-missing-file":
        return [*finetune, "--config", tmp / "missing.yaml"], [good]
    if case == "space-alias-bomb":
        config.write_text("optimizer:\n  type: categorical\n  choices:\n" + alias_bomb())
        return ["tune", good, "--trials", 1, "--space", config, *out], [good, config]
    if case == "set-huge-value":
        return [*finetune, "--set", "optim.lr=" + "x" * 100_000], [good]
    options = {
        "negative-epochs": ["--epochs", "-1"],
        "zero-batch-size": ["--batch-size", "0"],
        "absurd-learning-rate": ["--lr", "1e9"],
        "absurd-image-size": ["--image-size", "1000000"],
        "val-split-above-one": ["--val-split", "2"],
        "negative-max-pixels": ["--set", "data.max_pixels=-5"],
        "unknown-set-key": ["--set", "train.epoch=3"],
    }
    if case in options:
        return [*finetune, *options[case]], [good]
    if case == "checkpoint-of-other-classes":
        other = make_image_folder(tmp / "other", {"cat": 3, "dog": 3})
        return ["evaluate", trained["best"], other], [other, trained["best"]]
    if case == "non-tlcli-pt":
        torch.save({"fc.weight": torch.zeros(2, 4)}, pt)
    elif case.startswith("malicious-pickle"):
        payload = {"format": "tlcli-checkpoint", "x": PlantsMarker(tmp / "pwned")}
        if case.endswith("torch-save"):
            torch.save(payload, pt)
        else:
            pt.write_bytes(pickle.dumps(payload))
    elif case == "truncated-checkpoint":
        data = trained["best"].read_bytes()
        pt.write_bytes(data[: len(data) // 2])
    elif case == "empty-checkpoint":
        pt.write_bytes(b"")
    if pt.exists():
        return ["evaluate", pt, trained["data"]], [pt, trained["data"]]
    if case == "existing-run-dir":
        run = tmp / "my run"
        run.mkdir()
        (run / "notes.md").write_text("my earlier run")
        return ["finetune", good, *TINY, "--out", run], [good, run]
    if case == "resume-a-data-folder":
        return ["finetune", "--resume", good], [good]
    if case == "resume-before-first-checkpoint":
        run = tmp / "killed early"
        run.mkdir()
        shutil.copy(trained["run"] / "config.yaml", run / "config.yaml")
        return ["finetune", "--resume", run], [run]
    raise AssertionError(f"no command for case {case}")


def alias_bomb() -> str:
    """A YAML list of 330 bytes whose aliases stand for 9**8 strings (a 'billion laughs')."""
    levels = "abcdefghi"
    lines = ['  - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    pairs = zip(levels, levels[1:-1], strict=False)
    lines += [f"  - &{b} [{','.join([f'*{a}'] * 9)}]" for a, b in pairs]
    return "\n".join(lines) + "\n"


def _truncated_png() -> bytes:
    from corpus import random_image

    buffer = io.BytesIO()
    random_image(np.random.default_rng(0), 0, side=64).save(buffer, "PNG")
    return buffer.getvalue()[:200]


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_case_is_one_line_with_its_exit_code(case, tmp_path, trained):
    code, words = ERROR_CASES[case]
    args, kept = build_error_case(case, tmp_path, trained)
    before = {path: tree_digest(path) if path.is_dir() else path.read_bytes() for path in kept}
    result = invoke(*args)
    assert_error(result, code, words)
    for path, digest in before.items():
        assert (tree_digest(path) if path.is_dir() else path.read_bytes()) == digest, path
    new_run = tmp_path / "new-run"
    assert not new_run.exists() or not any(new_run.iterdir()), "a failed run left files"
    assert not (tmp_path / "pwned").exists(), "pickled code ran"


@pytest.mark.parametrize("case", list(USAGE_CASES))
def test_option_typer_rejects_is_exit_2_without_traceback(case, tmp_path, trained):
    extra, words = USAGE_CASES[case]
    if extra is None:
        args = ["evaluate", "--batch-size", "0", trained["best"], trained["data"]]
    else:
        args = ["finetune", trained["data"], *TINY, *extra, "--out", tmp_path / "r"]
    result = invoke(*args)
    assert result.exit_code == EXIT_CONFIG
    assert "Traceback" not in result.output and result.stdout == ""
    assert words in result.stderr
    assert not (tmp_path / "r").exists()


def test_class_with_one_image_trains_when_val_is_given(tmp_path):
    """One image is too few to split, but fine when the user provides val/ (documented)."""
    data = make_image_folder(
        tmp_path / "data", {"a": 5, "lonely": 1}, layout="split", val_counts={"a": 2, "lonely": 1}
    )
    result = invoke("finetune", data, *TINY, "--strategy", "head-only", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["num_train"] == 6 and summary["classes"] == ["a", "lonely"]


@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_layout_case_trains(case, tmp_path):
    """A class named like a split (railway trains; a class "val") holds images, not class
    folders: the folder is flat, every name a class (it was read as a split layout)."""
    name = case.removeprefix("class-named-")
    data = make_image_folder(tmp_path / "data", {name: 4, "car": 4, "boat": 4})
    result = invoke("finetune", data, *TINY, "--strategy", "head-only", "--out", tmp_path / "r")
    assert result.exit_code == LAYOUT_CASES[case], result.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["classes"] == sorted(["boat", "car", name])
    assert summary["num_train"] + summary["num_val"] == 12


def test_hostile_class_and_file_names_in_every_printer(tmp_path):
    """Non-UTF-8 bytes, a newline and an escape sequence in class and file names: finetune,
    evaluate (tables, report dir, plots) and predict (table, CSV, JSON) all run; the terminal
    sees escapes, the CSV has one line per row, the JSON is valid and holds the real names."""
    latin1, newline = os.fsdecode(b"caf\xe9"), "new\nline"
    data = make_image_folder(tmp_path / "data", {latin1: 4, newline: 4})
    (data / newline / f"{newline}_0.png").rename(data / newline / "x\x1b[2Jy.png")
    run = tmp_path / "run"
    result = invoke("finetune", data, *TINY, "--strategy", "head-only", "--out", run)
    assert result.exit_code == 0, result.stderr
    report = tmp_path / "report"
    evaluated = invoke("evaluate", run / "best.pt", data, "--report-dir", report)
    assert evaluated.exit_code == 0, evaluated.stderr
    assert (report / "confusion_matrix.png").stat().st_size > 0
    csv_path = tmp_path / "p.csv"
    predicted = invoke("predict", run / "best.pt", data, "--csv", csv_path)
    assert predicted.exit_code == 0, predicted.stderr
    for out in (result, evaluated, predicted):
        assert "\x1b" not in out.output and "\udce9" not in out.output
        assert not [line for line in out.output.splitlines() if line.startswith("error")]
    assert "caf\\xe9" in predicted.stdout and "new\\nline" in predicted.stdout
    lines = csv_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + 8 and lines[0].endswith(",p_caf\\xe9,p_new\\nline")
    as_json = invoke("predict", run / "best.pt", data, "--json")
    labels = {p["label"] for p in json.loads(as_json.stdout)["predictions"]}
    assert labels <= {latin1, newline}
    paths = {p["path"] for p in json.loads(as_json.stdout)["predictions"]}
    assert str(data / newline / "x\x1b[2Jy.png") in paths  # the real name, to open the file


# --- the documentation ----------------------------------------------------------------------


def test_every_case_is_documented_with_its_exit_code():
    """docs/reliability.md has a row `| `case` | outcome | exit code |` for every case here."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        match = re.match(r"\|\s*`([^`]+)`\s*\|(.*)\|\s*(\d+)\s*\|\s*$", line)
        if match:
            rows[match.group(1)] = int(match.group(3))
    expected = {case: code for case, (_, _, code) in MESSY_FOLDER_CASES.items()}
    expected |= {case: code for case, (code, _) in ERROR_CASES.items()}
    expected |= dict.fromkeys(USAGE_CASES, EXIT_CONFIG)
    expected |= LAYOUT_CASES
    expected |= {case: code for case, (code, _) in RUN_DIR_CASES.items()}
    expected |= dict.fromkeys(BAD_MANIFEST_CASES, EXIT_DATA)  # run in test_manifest.py
    missing = sorted(set(expected) - set(rows))
    assert not missing, f"not in {DOCS.name}: {missing}"
    wrong = {case: (rows[case], code) for case, code in expected.items() if rows[case] != code}
    assert not wrong, f"documented vs tested exit code: {wrong}"


def test_every_case_tested_elsewhere_names_a_test_that_exists():
    """RUN_DIR_CASES points at the test that runs each case: it must be there."""
    for case, (_, where) in RUN_DIR_CASES.items():
        file_name, test_name = where.split("::")
        source = (Path(__file__).parent / file_name).read_text()
        assert f"def {test_name}(" in source, (case, where)
