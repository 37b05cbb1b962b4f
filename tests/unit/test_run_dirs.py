"""Run dirs: one run per run dir, claimed before any work; --resume continues a run as it
was configured, except --epochs, which extends it; nothing is written under DATA_DIR.

The concurrent runs are real processes running the CLI, forked together by
tests/fault_driver.py, held at a barrier until both have passed every check of the run dir.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from corpus import make_image_folder, tree_digest
from typer.testing import CliRunner

from tlcli.cli import app
from tlcli.errors import EXIT_CONFIG, EXIT_RUN_DIR

REPO = Path(__file__).resolve().parents[2]
DRIVER = REPO / "tests" / "fault_driver.py"
TINY = [
    "--model", "test_resnet", "--no-pretrained", "--image-size", "64", "--batch-size", "8",
    "--device", "cpu", "--workers", "1", "--strategy", "head-only",
]  # fmt: skip
RACE_TIMEOUT = 180  # s for the driver to import torch and both runs to finish
CLOCK = 1_780_000_000.0  # the one second both default-named runs start in
# The claim a run holds on its run dir (tlcli.atomic.claim_folder): an flock on this file.
CLAIM_FILE = ".tlcli-claim"
runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    return errors[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("rundirs") / "data", {"red": 6, "blue": 6})


def run_together(base: Path, children: list[dict], cache: Path) -> dict[str, tuple[int, str]]:
    """Fork the children at once (fault_driver.py), held at one barrier; {name: (exit, stderr)}."""
    barrier = base / "barrier"
    barrier.mkdir()
    for child in children:
        child.update(stderr=str(base / f"{child['name']}.stderr"), barrier=str(barrier))
    plan = {
        "children": children,
        "pids": str(base / "pids.json"),
        "results": str(base / "results.json"),
    }
    (base / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TLCLI_CACHE_DIR": str(cache)}
    subprocess.run(
        [sys.executable, str(DRIVER), str(base / "plan.json")],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=RACE_TIMEOUT,
        check=True,
    )
    results = json.loads((base / "results.json").read_text())
    return {c["name"]: (results[c["name"]], Path(c["stderr"]).read_text()) for c in children}


def assert_run_of_seed(run: Path, seed: int) -> None:
    """Every file of the run dir is of the one run with this seed: no file of another."""
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == seed
    summary = json.loads((run / "summary.json").read_text())
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(run / name, map_location="cpu", weights_only=True)
        assert ckpt["config"]["train"]["seed"] == seed, name
        assert ckpt["metrics"]["best_val_acc"] == summary["val_acc"], name
    assert not (run / CLAIM_FILE).exists(), "the claim outlived its run"


def test_two_runs_with_one_out_one_trains_the_other_is_refused(data, tmp_path):
    """Must-show 4: both start together; one trains, the other exits 6 with one line."""
    run = tmp_path / "shared run"
    children = [
        {"name": f"seed{seed}", "argv": ["finetune", str(data), *TINY, "--seed", str(seed),
                                          "--out", str(run)]}
        for seed in (1, 2)
    ]  # fmt: skip
    results = run_together(tmp_path, children, tmp_path / "cache")
    codes = sorted(code for code, _ in results.values())
    assert codes == [0, EXIT_RUN_DIR], results
    winner = next(name for name, (code, _) in results.items() if code == 0)
    loser_stderr = next(err for code, err in results.values() if code == EXIT_RUN_DIR)
    line = one_error_line(loser_stderr)
    assert f"run dir {run}" in line and "in use" in line, line
    assert_run_of_seed(run, int(winner.removeprefix("seed")))


def test_two_default_named_runs_in_one_second_get_two_run_dirs(data, tmp_path):
    """runs/<data>-<second> twice in one second: the second run gets <...>-2, both intact."""
    work = tmp_path / "work"
    work.mkdir()
    children = [
        {"name": f"seed{seed}", "argv": ["finetune", str(data), *TINY, "--seed", str(seed)],
         "clock": CLOCK, "cwd": str(work)}
        for seed in (1, 2)
    ]  # fmt: skip
    results = run_together(tmp_path, children, tmp_path / "cache")
    assert all(code == 0 for code, _ in results.values()), results
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(CLOCK))
    runs = sorted((work / "runs").iterdir())
    assert [r.name for r in runs] == [f"data-{stamp}", f"data-{stamp}-2"]
    seeds = {yaml.safe_load((r / "config.yaml").read_text())["train"]["seed"] for r in runs}
    assert seeds == {1, 2}
    for r in runs:
        assert_run_of_seed(r, yaml.safe_load((r / "config.yaml").read_text())["train"]["seed"])


def test_a_claim_left_by_a_killed_run_is_no_obstacle(data, tmp_path):
    """SIGKILL cannot remove the claim file; the kernel dropped its lock, so --out works."""
    run = tmp_path / "killed"
    run.mkdir()
    (run / CLAIM_FILE).write_text("somehost 999999\n")
    result = invoke("finetune", data, *TINY, "--out", run)
    assert result.exit_code == 0, result.stderr
    assert_run_of_seed(run, 0)


@pytest.fixture(scope="module")
def stopped_run(data, tmp_path_factory) -> Path:
    """A 2-epoch run stopped (as by Ctrl-C) after epoch 1: resumable (module-wide: tests
    that resume it resume a copy)."""
    from tlcli.config import load_config
    from tlcli.errors import Interrupted
    from tlcli.progress import NullReporter
    from tlcli.train.run import finetune

    class StopAfterFirst(NullReporter):
        def epoch(self, row):
            if row["epoch"] >= 1:  # row 0 is LP-FT's probe
                raise KeyboardInterrupt

    cfg = load_config(None, [
        "model.name=test_resnet", "model.pretrained=false", "data.image_size=64",
        "data.batch_size=4", "data.workers=1", "train.device=cpu", "train.epochs=2",
        "strategy.name=partial",
    ])  # fmt: skip
    run = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLCLI_CACHE_DIR", str(run.parent / "cache"))
        with pytest.raises(Interrupted):
            finetune(data, cfg, out=run, reporter=StopAfterFirst())
    return run


def test_resume_of_a_run_another_process_trains_is_refused(stopped_run, tmp_path):
    import shutil

    stopped_run = Path(shutil.copytree(stopped_run, tmp_path / "stopped"))
    before = tree_digest(stopped_run)
    with (stopped_run / CLAIM_FILE).open("w") as claim:  # as a live `tlcli finetune` holds it
        fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
        claim.write(f"{socket.gethostname()} {os.getpid()}\n")
        claim.flush()
        result = invoke("finetune", "--resume", stopped_run)
        (stopped_run / CLAIM_FILE).unlink()
    assert result.exit_code == EXIT_RUN_DIR, result.stderr
    line = one_error_line(result.stderr)
    assert f"{stopped_run} is being trained by process {os.getpid()}" in line, line
    assert tree_digest(stopped_run) == before
    assert invoke("finetune", "--resume", stopped_run).exit_code == 0  # once it is free


def test_an_image_deleted_before_resume_is_one_line(stopped_run, data, tmp_path):
    """A file of the run's split is gone: the "folder changed" line, exit 3, how to go on."""
    import shutil

    from tlcli.errors import EXIT_DATA

    own_data = Path(shutil.copytree(data, tmp_path / "data"))
    run = Path(shutil.copytree(stopped_run, tmp_path / "run"))
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "data_dir": str(own_data)}))
    split = json.loads((run / "split.json").read_text())
    gone = own_data / split["splits"]["val"][0][0]
    gone.unlink()
    before = tree_digest(run)
    result = invoke("finetune", "--resume", run)
    assert result.exit_code == EXIT_DATA, result.stderr
    line = one_error_line(result.stderr)
    assert f"{gone} is in the split of {run} but gone from the data folder" in line, line
    assert f"restore it and run tlcli finetune --resume {run} again" in line, line
    assert tree_digest(run) == before


# --- --resume and its options ---------------------------------------------------------------

EPOCH_RUN = [
    "--model", "test_resnet", "--no-pretrained", "--image-size", "64", "--batch-size", "4",
    "--device", "cpu", "--workers", "1", "--strategy", "partial",
]  # fmt: skip


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> dict[str, Path]:
    """A finished 2-epoch run and a finished head-only L-BFGS run (module-wide: not changed)."""
    base = tmp_path_factory.mktemp("finished")
    runs = {"epochs": base / "epochs", "lbfgs": base / "lbfgs"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLCLI_CACHE_DIR", str(base / "cache"))
        result = invoke("finetune", data, *EPOCH_RUN, "--epochs", 2, "--out", runs["epochs"])
        assert result.exit_code == 0, result.stderr
        result = invoke("finetune", data, *TINY, "--out", runs["lbfgs"])
        assert result.exit_code == 0, result.stderr
    return runs


def _metrics(run: Path) -> list[dict[str, str]]:
    import csv

    with (run / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--lr", "0.1"], "--lr"),
        (["--epochs", "10", "--lr", "0.1"], "--lr"),
        (["--no-ema", "--set", "train.seed=4"], "--no-ema, --set"),
        (["--out", "elsewhere"], "--out"),
        (["DATA"], "DATA_DIR"),
    ],
)
def test_resume_refuses_every_option_but_epochs_by_name(stopped_run, data, extra, named):
    before = tree_digest(stopped_run)
    args = [str(data) if a == "DATA" else a for a in extra]
    result = invoke("finetune", "--resume", stopped_run, *args)
    assert result.exit_code == EXIT_CONFIG, result.stderr
    line = one_error_line(result.stderr)
    assert f"{named} cannot be given with --resume" in line, line
    assert tree_digest(stopped_run) == before


@pytest.mark.parametrize("kind", ["epochs", "lbfgs"])
def test_a_finished_run_has_nothing_to_resume_epoch_run_and_head_only_alike(finished, kind):
    """Both refuse with exit 6 and one line; neither rewrites anything (summary.json was)."""
    before = tree_digest(finished[kind])
    result = invoke("finetune", "--resume", finished[kind])
    assert result.exit_code == EXIT_RUN_DIR, result.stderr
    line = one_error_line(result.stderr)
    assert f"{finished[kind]} is finished" in line and "nothing to resume" in line, line
    assert tree_digest(finished[kind]) == before


def test_resume_with_fewer_epochs_than_done_is_refused(finished):
    before = tree_digest(finished["epochs"])
    result = invoke("finetune", "--resume", finished["epochs"], "--epochs", 2)
    assert result.exit_code == EXIT_CONFIG, result.stderr
    assert "has trained 2 epochs already" in one_error_line(result.stderr)
    assert tree_digest(finished["epochs"]) == before


def test_resume_with_epochs_extends_a_finished_run_on_the_new_schedule(finished, data, tmp_path):
    """--epochs 4 trains epochs 3 and 4 at the LR a 4-epoch run has there (the cosine is
    recomputed over the new total); epochs 1-2 stay as they were; config.yaml says 4."""
    import shutil

    run = tmp_path / "extended"
    shutil.copytree(finished["epochs"], run)
    first = _trained(run)
    result = invoke("finetune", "--resume", run, "--epochs", 4)
    assert result.exit_code == 0, result.stderr
    rows = _trained(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert rows[:2] == first
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 4
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 4
    straight = tmp_path / "straight"
    result = invoke("finetune", data, *EPOCH_RUN, "--epochs", 4, "--out", straight)
    assert result.exit_code == 0, result.stderr
    assert [r["lr"] for r in rows[2:]] == [r["lr"] for r in _trained(straight)[2:]]
    assert rows[1]["lr"] != rows[2]["lr"]
    # And extended again, from where it is now.
    assert invoke("finetune", "--resume", run, "--epochs", 5).exit_code == 0
    assert len(_trained(run)) == 5


def _trained(run: Path) -> list[dict]:
    """metrics.csv's trained epochs (LP-FT's probe is row 0)."""
    return [row for row in _metrics(run) if int(row["epoch"]) >= 1]


# --- nothing is written under DATA_DIR ------------------------------------------------------

# lr-find and tune take fewer options than finetune.
JOB = [
    "--model", "test_resnet", "--no-pretrained", "--device", "cpu", "--set", "data.image_size=64",
]  # fmt: skip
# Every command with an output, pointed inside the data folder (DATA): (argv, what is named).
OUTPUT_IN_DATA = {
    "finetune-out": (["finetune", "DATA", *TINY, "--out", "DATA/runs/x"], "--out"),
    "finetune-out-is-data": (["finetune", "DATA", *TINY, "--out", "DATA"], "--out"),
    "finetune-out-via-link": (["finetune", "DATA", *TINY, "--out", "LINK/x"], "--out"),
    "evaluate-report-dir": (["evaluate", "CKPT", "DATA", "--report-dir", "DATA/r"], "--report-dir"),
    "predict-csv": (["predict", "CKPT", "DATA", "--csv", "DATA/p.csv"], "--csv"),
    "predict-csv-in-training-data": (["predict", "CKPT", "OTHER", "--csv", "DATA/p.csv"], "--csv"),
    "export-into-training-data": (["export", "CKPT", "--out", "DATA/m.onnx"], "--out"),
    "lr-find-plot": (["lr-find", "DATA", *JOB, "--out", "DATA/lr.png"], "--out"),
    "tune-out": (["tune", "DATA", "--trials", "1", *JOB, "--out", "DATA/t"], "the tune run dir"),
    "tune-storage": (["tune", "DATA", "--trials", "1", *JOB, "--out", "OUT",
                      "--storage", "sqlite:///DATA/s.db"], "--storage"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(OUTPUT_IN_DATA))
def test_an_output_inside_the_data_folder_is_refused(case, finished, data, tmp_path):
    argv, what = OUTPUT_IN_DATA[case]
    (tmp_path / "link").symlink_to(data, target_is_directory=True)
    other = make_image_folder(tmp_path / "other", {"red": 2, "blue": 2})
    names = {"DATA": data, "LINK": tmp_path / "link", "OTHER": other, "OUT": tmp_path / "out",
             "CKPT": finished["lbfgs"] / "best.pt"}  # fmt: skip
    args = [re.sub(r"\b(DATA|LINK|OTHER|OUT|CKPT)\b", lambda m: str(names[m[1]]), a) for a in argv]
    before = tree_digest(data)
    result = invoke(*args)
    assert result.exit_code == EXIT_RUN_DIR, result.stderr
    line = one_error_line(result.stderr)
    assert f"{what} " in line and "is inside the data folder" in line, line
    assert tree_digest(data) == before


def test_finetune_dot_from_inside_the_data_folder_is_refused(data, monkeypatch):
    """The default run dir would be DATA/runs/...: refused, with an --out beside the data."""
    before = tree_digest(data)
    monkeypatch.chdir(data)
    result = invoke("finetune", ".", *TINY)
    assert result.exit_code == EXIT_RUN_DIR, result.stderr
    line = one_error_line(result.stderr)
    assert "the default run dir runs/data-" in line and "inside the data folder ." in line, line
    assert f"pass --out {data.parent / 'runs' / 'data-'}" in line, line
    assert tree_digest(data) == before
