"""Run the real `tlcli` CLI in child processes with faults injected, for test_faults.py.

    python tests/fault_driver.py PLAN.json

A fork server: it imports tlcli and torch once, then forks one child per entry of the plan's
"children"; each child runs `tlcli <argv>` (the same entry point as `python -m tlcli`) with
its stderr in its own file, and is killed by the test at a moment the test picks. Forking
saves each child the seconds of importing torch, which keeps the fault tests fast.

Per child (each optional):
  step_delay  seconds each training step sleeps, so that a kill lands mid-training
  hang_epoch  N: the write of last.pt after epoch N stops halfway, touches `marker` and
              sleeps, until the test kills the process
  fsize       bytes: once the first last.pt is written, files may grow to at most this
              size (RLIMIT_FSIZE), as on a disk that has just filled up
  barrier     a folder: each child waits at the start of the training job (prepare_job)
              until every child has got there or exited, so that two racing runs have both
              passed every check of the run dir before either writes to it
  clock       seconds since the epoch: time.strftime shows this moment (runs "started in
              the same second")
  cwd         the folder the child runs in

The server writes {name: pid} to plan["pids"] once all children run, then {name: status}
to plan["results"] when all have exited: the exit code, or -N when killed by signal N.
Only test code is patched here; tlcli itself runs unchanged.
"""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

HANG_SECONDS = 120  # far longer than the test waits: the process is killed first
BARRIER_SECONDS = 60  # a child waits this long at most for the others at the barrier


class StallingHandle:
    """A file handle that writes half of a checkpoint, then stalls (a slow disk, a big model)."""

    def __init__(self, handle, total: int, marker: Path):
        self.handle, self.total, self.marker, self.written = handle, total, marker, 0

    def write(self, data) -> int:
        if self.written >= self.total // 2:
            self.handle.flush()
            self.marker.write_text("mid-write\n")
            time.sleep(HANG_SECONDS)
        self.written += self.handle.write(data)
        return len(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)


def install_step_delay(seconds: float) -> None:
    from tlcli.train import loop

    real = loop.forward_backward

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return real(*args, **kwargs)

    loop.forward_backward = slow


def install_stalled_write(epoch: int, marker: Path) -> None:
    import torch

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        loop = obj.get("train_state", {}).get("loop", {}) if isinstance(obj, dict) else {}
        if loop.get("epoch") != epoch or isinstance(f, str | os.PathLike):
            return real_save(obj, f, *args, **kwargs)
        size = io.BytesIO()
        real_save(obj, size, *args, **kwargs)
        return real_save(obj, StallingHandle(f, size.tell(), marker), *args, **kwargs)

    torch.save = save


def install_disk_limit(limit: int) -> None:
    from tlcli.train import run

    real = run.save_checkpoint

    def save(path, payload):
        real(path, payload)
        if Path(path).name == "last.pt":
            # Past the limit a write fails with EFBIG (instead of a deadly SIGXFSZ).
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    run.save_checkpoint = save


def install_barrier(folder: Path, name: str, parties: int) -> None:
    from tlcli.train import run

    real = run.prepare_job

    def wait_for_all(*args, **kwargs):
        (folder / f"{name}.arrived").touch()
        deadline = time.monotonic() + BARRIER_SECONDS
        while time.monotonic() < deadline:
            if len({p.name.split(".")[0] for p in folder.iterdir()}) >= parties:
                break
            time.sleep(0.02)
        return real(*args, **kwargs)

    run.prepare_job = wait_for_all


def install_clock(seconds: float) -> None:
    real = time.strftime

    def strftime(fmt, t=None):
        return real(fmt, time.localtime(seconds) if t is None else t)

    time.strftime = strftime


def run_child(child: dict, parties: int = 1) -> int:
    """In the forked child: inject the faults, run the CLI, return its exit code."""
    stderr = os.open(child["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(stderr, 2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    if child.get("step_delay"):
        install_step_delay(float(child["step_delay"]))
    if child.get("hang_epoch") is not None:
        install_stalled_write(int(child["hang_epoch"]), Path(child["marker"]))
    if child.get("fsize"):
        install_disk_limit(int(child["fsize"]))
    if child.get("barrier"):
        install_barrier(Path(child["barrier"]), child["name"], parties)
    if child.get("clock") is not None:
        install_clock(float(child["clock"]))
    if child.get("cwd"):
        os.chdir(child["cwd"])
    from tlcli.cli import main

    sys.argv = ["tlcli", *child["argv"]]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # a crash: print it as Python would, exit 1
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        if child.get("barrier"):  # an exited child no longer holds the others up
            (Path(child["barrier"]) / f"{child['name']}.exited").touch()
    return code


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    # Everything the children need, imported once here (fork copies it).
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import timm  # noqa: F401
    import torch  # noqa: F401

    import tlcli.cli  # noqa: F401
    import tlcli.plots  # noqa: F401
    import tlcli.render  # noqa: F401
    import tlcli.train.head_fit  # noqa: F401
    import tlcli.train.run  # noqa: F401

    # Python ignores SIGINT when started with it ignored (a background job of a
    # non-interactive shell); the children must get Ctrl-C as a user's tlcli does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    pids = {}
    for child in plan["children"]:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = run_child(child, len(plan["children"]))
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids[child["name"]] = pid
    tmp = Path(plan["pids"] + ".tmp")
    tmp.write_text(json.dumps(pids))
    os.replace(tmp, plan["pids"])
    results = {}
    for name, pid in pids.items():
        _, status = os.waitpid(pid, 0)
        results[name] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    tmp = Path(plan["results"] + ".tmp")
    tmp.write_text(json.dumps(results))
    os.replace(tmp, plan["results"])


if __name__ == "__main__":
    main()
