"""Hostile inputs beyond the image corpus (issue 12, 2.8 and 2.10), through the real CLI.

Crafted checkpoints and corrupt local-dir: model folders, out-of-range option values, output
paths that cannot be written, broken pipes: each ends in one `error:` line with the exit code
of README.md's table, never a traceback, never a network connection, never a file the input
names being read. Every case has a row in docs/reliability.md with the same exit code.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from corpus import (
    CRAFTED_CHECKPOINT_CASES,
    LOCAL_DIR_CASES,
    make_checkpoint,
    make_crafted_checkpoint,
    make_image_folder,
    make_local_dir_model,
)
from typer.testing import CliRunner

from tlcli.cli import app
from tlcli.errors import EXIT_CHECKPOINT, EXIT_CONFIG, EXIT_MODEL, EXIT_RUN_DIR

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "reliability.md"
TINY = [
    "--model", "test_resnet", "--no-pretrained", "--image-size", "64", "--batch-size", "8",
    "--device", "cpu", "--workers", "1", "--epochs", "1",
]  # fmt: skip
MAX_ERROR_CHARS = 400  # one line a person reads, not a dump of the input
runner = CliRunner()

# case -> exit code; docs/reliability.md has a row for each.
CHECKPOINT_CASES = {f"checkpoint-{case}": EXIT_CHECKPOINT for case in CRAFTED_CHECKPOINT_CASES}
CHECKPOINT_CASES["checkpoint-compressed-zip"] = EXIT_CHECKPOINT
MODEL_DIR_CASES = {f"local-dir-{case}": EXIT_MODEL for case in LOCAL_DIR_CASES}
# Out-of-range values: case -> (command, its options, words of the error line); all exit 2.
OPTION_CASES = {
    "seed-above-2-32": ("finetune", ["--seed", str(2**32)], "train.seed=4294967296"),
    "warmup-epochs-inf": ("finetune", ["--warmup-epochs", "inf"], "warmup_epochs=inf"),
    "lr-nan": ("finetune", ["--lr", "nan"], "optim.lr=nan"),
    "set-clip-grad-norm-inf": ("finetune", ["--set", "optim.clip_grad_norm=inf"], "=inf"),
    "set-weight-decay-nan": ("finetune", ["--set", "optim.weight_decay=.nan"], "=nan"),
    "patience-huge": ("finetune", ["--patience", str(10**30)], "train.patience=1000"),
    "device-mps-missing": ("finetune", ["--device", "mps"], "MPS is not available"),
    "device-cuda-not-a-number": ("finetune", ["--device", "cuda:abc"], "'cuda:abc'"),
    "evaluate-device-unknown": ("evaluate", ["--device", "tpu"], "'tpu'"),
    "evaluate-device-mps": ("evaluate", ["--device", "mps"], "MPS is not available"),
    "evaluate-batch-size-huge": ("evaluate", ["--batch-size", str(10**12)], "--batch-size="),
    "predict-top-k-huge": ("predict", ["--top-k", str(10**20)], "--top-k="),
    "export-tolerance-nan": ("export", ["--tolerance", "nan"], "--tolerance=nan"),
    "export-tolerance-negative": ("export", ["--tolerance", "-1"], "--tolerance=-1.0"),
    "export-opset-huge": ("export", ["--opset", "99999"], "--opset=99999"),
    "lr-find-start-lr-nan": ("lr-find", ["--start-lr", "nan"], "--start-lr=nan"),
    "lr-find-num-iter-huge": ("lr-find", ["--num-iter", str(10**12)], "--num-iter="),
    "tune-trials-huge": ("tune", ["--trials", str(10**12)], "--trials="),
}


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_one_line(result, code: int, words: tuple[str, ...] = ()) -> str:
    assert "Traceback" not in result.output
    assert result.exit_code == code, (result.exit_code, result.output[-2000:])
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert len(lines[0]) <= MAX_ERROR_CHARS, lines[0][:1000]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Every socket connect fails and is recorded: loading must never try one."""
    attempts: list = []

    def connect(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect)
    return attempts


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A checkpoint as finetune writes it (classes blue, red) and a folder of those classes."""
    base = tmp_path_factory.mktemp("hostile-trained")
    data = make_image_folder(base / "data", {"red": 3, "blue": 3})
    (base / "run").mkdir()
    return {"data": data, "run": base / "run", "best": make_checkpoint(base / "run" / "best.pt")}


# --- 2.8 untrusted checkpoints ----------------------------------------------------------------


def compressed_copy(good: Path, out: Path) -> Path:
    """The checkpoint with its members deflated, plus one that inflates to 64 MiB: what a zip
    bomb looks like (torch.save stores every member as is)."""
    import zipfile

    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        names = src.namelist()
        for name in names:
            dst.writestr(name, src.read(name))
        dst.writestr(names[0].split("/")[0] + "/data/9999", bytes(64 << 20))
    return out


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_crafted_checkpoint_is_one_line_exit_5_and_touches_no_network(
    case, tmp_path, trained, no_network
):
    kind = case.removeprefix("checkpoint-")
    pt = tmp_path / f"{kind}.pt"
    if kind == "compressed-zip":
        compressed_copy(trained["best"], pt)
    else:
        make_crafted_checkpoint(trained["best"], kind, pt)
    before = pt.read_bytes()
    for command in (["evaluate", pt, trained["data"]], ["predict", pt, trained["data"]]):
        line = assert_one_line(invoke(*command), CHECKPOINT_CASES[case], (str(pt),))
        assert "checkpoint" in line or "tlcli" in line
    assert no_network == [], "loading a checkpoint tried to connect"
    assert pt.read_bytes() == before


def test_checkpoint_kwargs_never_reach_timm(tmp_path, trained, monkeypatch):
    """checkpoint_path= would make timm read any file: it is refused before timm is called."""
    import timm

    calls: list = []
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: calls.append(k) or real(*a, **k))
    pt = make_crafted_checkpoint(trained["best"], "kwargs-checkpoint-path", tmp_path / "x.pt")
    assert_one_line(invoke("evaluate", pt, trained["data"]), EXIT_CHECKPOINT, ("checkpoint_path",))
    assert calls == []


def test_a_sound_checkpoint_still_loads_on_the_meta_checked_path(trained, no_network):
    result = invoke("evaluate", trained["best"], trained["data"], "--json", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert no_network == []


@pytest.mark.parametrize("case", list(MODEL_DIR_CASES))
def test_corrupt_local_dir_model_is_one_line_exit_4(case, tmp_path, no_network):
    folder = make_local_dir_model(tmp_path / "weights", case.removeprefix("local-dir-"))
    data = make_image_folder(tmp_path / "data", {"red": 3, "blue": 3})
    args = [a for a in TINY if a != "--no-pretrained"]
    args[args.index("test_resnet")] = f"local-dir:{folder}"
    result = invoke("finetune", data, *args, "--out", tmp_path / "run")
    assert_one_line(result, MODEL_DIR_CASES[case], (str(folder),))
    assert no_network == []


def test_an_intact_local_dir_model_loads(tmp_path, no_network):
    from tlcli.models import create_model

    folder = make_local_dir_model(tmp_path / "weights")
    model = create_model(f"local-dir:{folder}", 2, pretrained=True)
    assert model.get_classifier().out_features == 2
    assert no_network == []


# --- 2.10 out-of-range values ------------------------------------------------------------------


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_out_of_range_value_is_one_line_exit_2(case, tmp_path, trained):
    command, options, words = OPTION_CASES[case]
    out = tmp_path / "out"
    job = [a for a in TINY if a not in ("--device", "cpu")]
    short = ["--model", "test_resnet", "--no-pretrained", "--batch-size", "8"]
    args = {
        "finetune": ["finetune", trained["data"], *job, "--out", out],
        "evaluate": ["evaluate", trained["best"], trained["data"]],
        "predict": ["predict", trained["best"], trained["data"]],
        "export": ["export", trained["best"], "--out", tmp_path / "m.onnx"],
        "lr-find": ["lr-find", trained["data"], *short, "--out", tmp_path / "lr.png"],
        "tune": ["tune", trained["data"], *short, "--out", out],
    }[command]
    assert_one_line(invoke(*args, *options), EXIT_CONFIG, (words,))
    assert not out.exists() or not any(out.iterdir()), "a refused run left files"
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "lr.png").exists()


# --- 2.10 a closed stdout pipe --------------------------------------------------------------


def test_a_closed_stdout_pipe_exits_0_quietly(trained):
    """`tlcli evaluate --json | true`: the reader is gone before the result is written.
    Python printed "Exception ignored ... BrokenPipeError" at exit; a real process, so that
    last flush is seen."""
    args = ["evaluate", trained["best"], trained["data"], "--device", "cpu", "--json"]
    child = subprocess.Popen(
        [sys.executable, "-m", "tlcli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    child.stdout.close()  # the reader exits before anything is written
    err = child.stderr.read().decode()
    assert child.wait(timeout=300) == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err and "Broken" not in err


def test_a_closed_stdout_pipe_under_rich_tables_exits_0(trained, monkeypatch):
    """`tlcli predict ... | head -1`: Rich's own broken-pipe exit is 1, a crash by the table."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as closed:
        monkeypatch.setattr(sys, "stdout", closed)
        args = ["predict", trained["best"], trained["data"], "--device", "cpu"]
        code = app(list(map(str, args)), standalone_mode=False)
    assert code == 0


# --- 2.10 a full disk during export -------------------------------------------------------------

FULL_DISK_CHILD = """
import json, resource, signal, sys
from tlcli.cli import app
import onnx, torch  # noqa: F401  (imported before the limit)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
codes = []
for args in json.loads(sys.argv[2]):
    try:
        codes.append(app(args, standalone_mode=False))
    except SystemExit as exc:
        codes.append(exc.code)
print(json.dumps(codes))
"""


def test_a_full_disk_during_export_is_exit_7_and_leaves_the_old_files(trained, tmp_path):
    """TorchScript aborted the process (exit 134) and left its temp file; ONNX said exit 4."""
    import json

    out = tmp_path / "exports"
    out.mkdir()
    commands = []
    for fmt in ("torchscript", "onnx"):
        (out / f"m.{fmt}").write_text("the earlier export")
        (out / f"m.{fmt}.json").write_text("{}")
        commands.append(
            ["export", str(trained["best"]), "--format", fmt, "--out", str(out / f"m.{fmt}")]
            + ["--force", "--check-images", str(trained["data"])]
        )
    child = subprocess.run(
        [sys.executable, "-c", FULL_DISK_CHILD, str(64 << 10), json.dumps(commands)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    assert json.loads(child.stdout.splitlines()[-1]) == [7, 7], child.stderr[-3000:]
    errors = [line for line in child.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all("disk full while writing" in e for e in errors), errors
    assert "Traceback" not in child.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "m.onnx",
        "m.onnx.json",
        "m.torchscript",
        "m.torchscript.json",
    ], "a temp file was left"
    for fmt in ("torchscript", "onnx"):
        assert (out / f"m.{fmt}").read_text() == "the earlier export"
        assert (out / f"m.{fmt}.json").read_text() == "{}"


# --- 2.10 outputs that cannot be written, checked before the work ------------------------------

OUTPUT_CASES = {
    "report-dir-under-a-file": ("evaluate", "--report-dir", "rep"),
    "csv-under-a-file": ("predict", "--csv", "p.csv"),
    "export-out-under-a-file": ("export", "--out", "m.onnx"),
    "lr-find-out-under-a-file": ("lr-find", "--out", "lr.png"),
}


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
def test_an_output_under_a_file_is_refused_before_any_work(case, tmp_path, trained, monkeypatch):
    import tlcli.data.cache

    command, option, name = OUTPUT_CASES[case]
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    decoded: list = []
    monkeypatch.setattr(tlcli.data.cache, "decode_square", lambda *a, **k: decoded.append(a))
    target = blocker / "sub" / name
    short = ["--model", "test_resnet", "--no-pretrained", "--batch-size", "8"]
    args = {
        "evaluate": ["evaluate", trained["best"], trained["data"]],
        "predict": ["predict", trained["best"], trained["data"]],
        "export": ["export", trained["best"]],
        "lr-find": ["lr-find", trained["data"], *short],
    }[command]
    assert_one_line(invoke(*args, option, target), EXIT_RUN_DIR, ("is a file, not a folder",))
    assert decoded == [], "the work was done before the output was checked"
    assert blocker.read_text() == "a file, not a folder"


# --- 2.10 tune's storage ------------------------------------------------------------------------


def test_tune_storage_password_is_never_shown():
    from tlcli.tune.search import mask_storage_url

    assert mask_storage_url("postgresql://ann:s3cret@db:5432/tlcli") == (
        "postgresql://ann:***@db:5432/tlcli"
    )
    assert mask_storage_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


TUNE_STORAGE_CASES = {
    "tune-storage-not-a-database": ("sqlite:///{tmp}/photo.db", "file is not a database"),
    "tune-storage-typo": ("sqlte:///{tmp}/study.db", "cannot open storage"),
    "tune-storage-password": ("postgresql://ann:s3cret@127.0.0.1:9/x", "postgresql://ann:***@"),
}


@pytest.mark.parametrize("case", list(TUNE_STORAGE_CASES))
def test_a_bad_tune_storage_is_one_line_and_leaves_out_unclaimed(case, tmp_path, trained):
    """A typo'd --storage used to write OUT/tune.json first, binding --out to it for good."""
    url, words = TUNE_STORAGE_CASES[case]
    (tmp_path / "photo.db").write_bytes(trained["best"].read_bytes()[:4096])
    out = tmp_path / "tune"
    short = ["--model", "test_resnet", "--no-pretrained", "--batch-size", "8"]
    result = invoke(
        "tune", trained["data"], *short, "--trials", "1", "--no-lr-find",
        "--storage", url.format(tmp=tmp_path), "--out", out,
    )  # fmt: skip
    line = assert_one_line(result, EXIT_RUN_DIR, (words,))
    assert "s3cret" not in result.output and "s3cret" not in line
    assert not out.exists() or not any(out.iterdir()), "the failed storage claimed --out"


# --- 2.10 Ctrl-C in the first seconds ---------------------------------------------------------

EARLY_CTRL_C_CHILD = """
import os, signal, sys, threading
from tlcli.interrupt import hold_stop_signals
hold_stop_signals()  # what the tlcli script does first
# Lands while the CLI and torch are imported (they take seconds), or just after.
threading.Timer(float(sys.argv[1]), os.kill, (os.getpid(), signal.SIGINT)).start()
from tlcli.cli import main
sys.argv = ["tlcli", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize("delay", [0.3])
def test_ctrl_c_while_starting_is_one_line_exit_130(delay, trained):
    """A KeyboardInterrupt in the middle of torch's import ended in a RecursionError or a C++
    abort (exit 134); now the import finishes and the command stops at its start."""
    args = ["evaluate", str(trained["best"]), str(trained["data"]), "--device", "cpu"]
    child = subprocess.run(
        [sys.executable, "-c", EARLY_CTRL_C_CHILD, str(delay), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    lines = [line for line in child.stderr.splitlines() if line.strip()]
    assert child.returncode == 130, child.stderr[-3000:]
    assert lines == ["interrupted"], child.stderr[-3000:]
    assert child.stdout == ""


def test_a_stop_signal_during_an_import_waits_for_the_import():
    import signal

    from tlcli.interrupt import deferred_stop_signals

    finished = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_stop_signals():
            os.kill(os.getpid(), signal.SIGINT)
            finished.append("the rest of the import ran")
    assert finished == ["the rest of the import ran"]


# --- 2.10 every exit code is the README's -----------------------------------------------------


def readme_exit_codes() -> dict[int, str]:
    """README.md's `## Exit codes` table: {code: meaning}."""
    text = (ROOT / "README.md").read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r"^\|\s*(\d+)\s*\|(.*)\|\s*$", text, flags=re.MULTILINE)
    }


def all_subclasses(cls: type) -> list[type]:
    return [sub for child in cls.__subclasses__() for sub in (child, *all_subclasses(child))]


# What each error class means, in the README's words for its code.
ERROR_MEANINGS = {
    "ConfigError": "bad usage, option value or config file",
    "TrainingDiverged": "training diverged",
    "DataError": "the image folder cannot be used",
    "FolderChanged": "the image folder cannot be used",
    "ModelError": "the model cannot be built",
    "CheckpointError": "a checkpoint is refused",
    "RunDirError": "the run dir",
    "ResourceError": "out of a resource",
}


def raise_in_command(monkeypatch, exc: BaseException) -> None:
    """evaluate's first library call raises exc: the CLI alone turns it into an exit code."""
    import tlcli.inference

    def load_models(*args, **kwargs):
        raise exc

    monkeypatch.setattr(tlcli.inference, "load_models", load_models)


def test_every_error_class_exits_with_the_readme_code(tmp_path, monkeypatch):
    import signal

    import tlcli.errors as errors

    table = readme_exit_codes()
    classes = {cls.__name__: cls for cls in all_subclasses(errors.TlcliError)}
    assert set(ERROR_MEANINGS) <= set(classes), "an error class was renamed"
    unlisted = sorted(set(classes) - set(ERROR_MEANINGS) - {"Interrupted"})
    assert not unlisted, f"error classes without a README meaning here: {unlisted}"
    args = ["evaluate", tmp_path / "best.pt", tmp_path]
    for name, meaning in ERROR_MEANINGS.items():
        raise_in_command(monkeypatch, classes[name]("the problem; what to do"))
        result = runner.invoke(app, list(map(str, args)))
        assert result.exit_code in table, (name, result.exit_code)
        assert meaning in table[result.exit_code], (name, result.exit_code, meaning)
        assert result.stderr.strip() == "error: the problem; what to do"
    faults = {
        "an unexpected crash": ValueError("a bug"),
        "out of a resource": OSError(28, "No space left on device", "x"),
        "interrupted": KeyboardInterrupt(),
    }
    for meaning, exc in faults.items():
        raise_in_command(monkeypatch, exc)
        result = runner.invoke(app, list(map(str, args)))
        assert meaning in table.get(result.exit_code, ""), (meaning, result.exit_code)

    def terminated(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    import tlcli.inference

    monkeypatch.setattr(tlcli.inference, "load_models", terminated)
    result = runner.invoke(app, list(map(str, args)))
    assert "terminated (SIGTERM" in table.get(result.exit_code, ""), result.exit_code
    assert set(table) == {0, 1, 2, 3, 4, 5, 6, 7, 130, 143}


# --- the documentation --------------------------------------------------------------------------


def documented_cases() -> dict[str, int]:
    rows = {}
    for line in DOCS.read_text().splitlines():
        match = re.match(r"\|\s*`([^`]+)`\s*\|(.*)\|\s*(\d+)\s*\|\s*$", line)
        if match:
            rows[match.group(1)] = int(match.group(3))
    return rows


def test_every_hostile_case_is_documented_with_its_exit_code():
    expected = CHECKPOINT_CASES | MODEL_DIR_CASES | dict.fromkeys(OPTION_CASES, EXIT_CONFIG)
    expected |= {"closed-stdout-pipe": 0, "export-disk-full": 7, "report-dir-many-classes": 0}
    expected |= dict.fromkeys([*OUTPUT_CASES, *TUNE_STORAGE_CASES], EXIT_RUN_DIR)
    expected |= {"ctrl-c-while-starting": 130}
    rows = documented_cases()
    missing = sorted(set(expected) - set(rows))
    assert not missing, f"not in {DOCS.name}: {missing}"
    wrong = {c: (rows[c], code) for c, code in expected.items() if rows[c] != code}
    assert not wrong, f"documented vs tested exit code: {wrong}"
