"""Run dirs: one run per run dir, claimed before any work, never overwritten; the paths of its
files, and run.json.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlcli.atomic import (
    CLAIM_FILE,
    claim_folder,
    claim_holder,
    holds_files,
    refuse_output_inside,
    release_claim,
    write_text_atomically,
)
from tlcli.errors import RunDirError
from tlcli.train.summary import RunSummary


@dataclass(frozen=True)
class RunDir:
    """A run dir and the files in it (as timm's CheckpointSaver owns best and last): made
    and claimed (create_run_dir) or claimed to resume (claim_run_to_resume); run.json and
    summary.json written atomically through it."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def run_info(self) -> Path:
        return self.root / "run.json"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def best(self) -> Path:
        return self.root / "best.pt"

    @property
    def last(self) -> Path:
        return self.root / "last.pt"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    def read_info(self) -> RunInfo:
        return RunInfo.from_dict(json.loads(self.run_info.read_text()))

    def write_info(self, info: RunInfo) -> None:
        write_text_atomically(self.run_info, json.dumps(info.to_dict(), indent=1))

    def write_summary(self, summary: RunSummary) -> None:
        write_text_atomically(self.summary, json.dumps(summary.to_dict(), indent=1))


@dataclass(frozen=True)
class RunInfo:
    """run.json: what --resume and the output guards read back (the data the run was trained
    on, and why its strategy was chosen)."""

    data_dir: str
    created: str
    strategy_reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "created": self.created,
            "strategy_reasons": self.strategy_reasons,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunInfo:
        return cls(
            data_dir=data["data_dir"],
            created=data.get("created", ""),
            strategy_reasons=data.get("strategy_reasons", []),
        )


def data_dir_of_run(run_dir: Path) -> Path | None:
    """The data folder a run dir's run was trained on (run.json), None when not a run dir."""
    try:
        return Path(RunDir(Path(run_dir)).read_info().data_dir)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def default_run_dir(data_dir: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{Path(data_dir).resolve().name}-{stamp}"


# Default run dirs started in one second are told apart by -2, -3, ...; past this many,
# something is wrong (a loop starting runs): pass --out.
MAX_DEFAULT_NAME_TRIES = 1000


def make_unique_dir(base: Path) -> Path:
    """Create base, else base-2, base-3, ...: the first that did not exist. mkdir is atomic,
    so two runs started in the same second get two folders."""
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, MAX_DEFAULT_NAME_TRIES + 1):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RunDirError(f"{base} and {MAX_DEFAULT_NAME_TRIES - 1} variants exist; pass --out")


def create_run_dir(out: Path | None, data_dir: Path | None = None) -> tuple[RunDir, int]:
    """Make and claim a fresh run dir (--out, else a new runs/<data>-<time>[-N]); refuse a
    non-empty one (never overwrite a user's run) and one another process is starting in.

    Returns the paths and the claim (atomic.claim_folder) to release when the run ends."""
    root = Path(out) if out is not None else default_run_dir(Path(data_dir or "."))
    if out is None and data_dir is not None:
        # Refused rather than moved: a run dir somewhere the user did not name (the data's
        # parent may be a shared, read-only data store) would be a surprise.
        where = Path(data_dir).resolve().parent / "runs" / root.name
        refuse_output_inside(root, [data_dir], "the default run dir", f"pass --out {where}")
    refuse_output_inside(root, [data_dir], "--out")
    try:
        if out is None:
            root = make_unique_dir(root)
        elif holds_files(root, {CLAIM_FILE}):
            raise run_dir_exists(root)
        root.mkdir(parents=True, exist_ok=True)
        claim = claim_folder(root)
    except OSError as exc:
        raise RunDirError(f"cannot create run dir {root}: {exc.strerror}") from None
    if claim is None:
        raise RunDirError(
            f"run dir {root} is in use: {claim_holder(root)} is starting a run in it; "
            "pass another --out"
        )
    if holds_files(root, {CLAIM_FILE}):  # another run filled it between our check and claim
        release_claim(root, claim)
        raise run_dir_exists(root)
    return RunDir(root), claim


def run_dir_exists(root: Path) -> RunDirError:
    return RunDirError(
        f"run dir {root} already exists and is not empty; pass a new --out, or "
        f"--resume {root} to continue it"
    )


def claim_run_to_resume(root: Path) -> int:
    """Claim a run dir for --resume; refuse one that another live process is training."""
    try:
        claim = claim_folder(root)
    except OSError as exc:
        raise RunDirError(f"cannot resume {root}: {exc.strerror}") from None
    if claim is None:
        raise RunDirError(
            f"{root} is being trained by {claim_holder(root)}; wait for it to finish or stop "
            f"it, then --resume {root}"
        )
    return claim
