"""atomic's output guards, the one home of "never overwrite a user's folder or file"
(run dirs, report dirs, export, predict --csv, lr-find's plot, tune and doctor use them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlcli.atomic import CLAIM_FILE, check_new_dir, check_new_file, holds_files
from tlcli.errors import RunDirError


def make(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "out"
    if kind == "file":
        path.write_text("x")
    elif kind != "missing":
        path.mkdir()
        for name in {"empty dir": [], "claim only": [CLAIM_FILE], "dir with a file": ["a"]}[kind]:
            (path / name).write_text("")
    return path


@pytest.mark.parametrize(
    "kind, holds, holds_ignoring_claim",
    [
        ("missing", False, False),
        ("empty dir", False, False),
        ("claim only", True, False),  # a killed run's claim file: empty for run dirs only
        ("dir with a file", True, True),
        ("file", True, True),
    ],
)
def test_holds_files(tmp_path, kind, holds, holds_ignoring_claim) -> None:
    path = make(tmp_path, kind)
    assert holds_files(path) is holds
    assert holds_files(path, {CLAIM_FILE}) is holds_ignoring_claim


@pytest.mark.parametrize("kind", ["dir with a file", "file", "claim only"])
def test_check_new_dir_refuses_what_holds_files(tmp_path, kind) -> None:
    path = make(tmp_path, kind)
    with pytest.raises(RunDirError, match="already exists and is not empty; pass a new --out$"):
        check_new_dir(path, "--out")


@pytest.mark.parametrize("kind", ["missing", "empty dir"])
def test_check_new_dir_takes_a_new_or_empty_folder(tmp_path, kind) -> None:
    check_new_dir(make(tmp_path, kind))


def test_check_new_file(tmp_path) -> None:
    existing = make(tmp_path, "file")
    with pytest.raises(RunDirError, match="already exists; pass --force to replace it"):
        check_new_file(existing)
    with pytest.raises(RunDirError, match="already exists; pass another --out$"):
        check_new_file(existing, advice="pass another --out")
    check_new_file(existing, force=True)
    check_new_file(tmp_path / "new.csv")
    with pytest.raises(RunDirError, match="is a folder; give a file name"):
        check_new_file(tmp_path, force=True)
    with pytest.raises(RunDirError, match=r"^--out .*: .* is a file, not a folder"):
        check_new_file(existing / "below.png", option="--out")
