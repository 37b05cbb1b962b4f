"""Atomic file writes (a reader sees the old file or the new one, never a half-written one),
the clean-up of temp files that killed writers leave behind, and the guards every output
passes first: never overwrite a user's folder or file, never write under a data folder."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import BinaryIO

from tlcli.errors import RunDirError, exception_chain

try:
    import fcntl
except ImportError:  # Windows: no flock; claims always succeed there
    fcntl = None

TEMP_SUFFIX = ".tmp"  # .<name>.<random>.tmp next to the target while it is written
# The lock file a process holds while it owns a folder (a run dir): see claim_folder.
CLAIM_FILE = ".tlcli-claim"


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """write() into a temp file of its own in path's folder, fsync, then rename over path.

    A crash, a kill or a full disk mid-write leaves the previous file in place, never a
    truncated one (os.replace is atomic on POSIX), and two processes writing one path at once
    never share a temp file; a killed process may leave its temp file behind.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        # mkstemp makes the file 0600; a report or CSV is meant to be shared like any file
        # the user's programs write, so it gets the mode open() would give it (umask).
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        # torch.save turns an exception raised inside handle.write (Ctrl-C, ENOSPC) into a
        # RuntimeError; a Ctrl-C stays a Ctrl-C.
        if any(isinstance(e, KeyboardInterrupt) for e in exception_chain(exc)):
            raise KeyboardInterrupt from None
        raise


def current_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def write_text_atomically(path: Path, text: str) -> None:
    """write_atomically for a text file (UTF-8): CSVs, YAML, JSON."""
    data = text.encode("utf-8")
    write_atomically(path, lambda handle: handle.write(data))


def refuse_output_inside(
    output: Path, data_dirs: Iterable[Path | None], what: str, advice: str = ""
) -> None:
    """Refuse an output path (run dir, report dir, export, CSV, plot) that is, or is inside,
    one of the data folders a command reads or its model was trained on: tlcli writes
    nothing under a data folder (a run dir there would be taken for a class next time).
    Every command checks its outputs here, before any work. Links are followed."""
    out = Path(output).resolve()
    for folder in data_dirs:
        if folder is None or not Path(folder).is_dir():  # a file input has no inside
            continue
        data = Path(folder).resolve()
        if out == data or data in out.parents:
            raise RunDirError(
                f"{what} {output} is inside the data folder {folder}, and tlcli writes "
                f"nothing under a data folder; {advice or 'give a path outside it'}"
            )


def fsync_dir(folder: Path) -> None:
    """Make a rename itself durable (a power cut after it keeps the new file)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows): the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host."""
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def temp_prefix(tag: str, pid: int | None = None) -> str:
    """`.<tag>.<host>.<pid>.`: names a temp file's writer, so that a later process can tell
    the orphans of killed writers on its own host (`remove_orphaned_temp_files`)."""
    return f".{tag}.{socket.gethostname()}.{os.getpid() if pid is None else pid}."


def remove_orphaned_temp_files(folder: Path, tag: str) -> list[Path]:
    """Delete the temp files named by temp_prefix(tag) whose writer no longer runs on this host
    (SIGKILL, out of memory, power cut); those of live writers and other hosts sharing the
    folder are left alone."""
    host_prefix = f".{tag}.{socket.gethostname()}."
    removed = []
    for tmp in Path(folder).glob(f"{host_prefix}*{TEMP_SUFFIX}"):
        pid = tmp.name[len(host_prefix) :].split(".", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def check_output_location(path: Path, option: str) -> None:
    """Fail before any work when `path` could not be created at the end of it: its nearest
    existing ancestor must be a folder this process may write in (not a file, not locked)."""
    path = Path(path).absolute()
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RunDirError(
            f"{option} {path}: {ancestor} is a file, not a folder; give a path in a folder"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise RunDirError(f"{option} {path}: cannot write in {ancestor}; give a path you can write")


def holds_files(path: Path, ignored: Collection[str] = ()) -> bool:
    """Whether path exists and is not an empty folder: a file, or a folder with an entry
    not named in `ignored` (a run dir's claim file left by a killed run counts as empty)."""
    path = Path(path)
    if not path.exists():
        return False
    return not path.is_dir() or any(p.name not in ignored for p in path.iterdir())


def check_new_dir(path: Path, option: str = "--report-dir") -> None:
    """Refuse an existing non-empty folder (a report never overwrites the user's files), and
    one that could not be created."""
    if holds_files(path):
        raise RunDirError(f"{path} already exists and is not empty; pass a new {option}")
    check_output_location(path, option)


def check_new_file(
    path: Path,
    force: bool = False,
    option: str = "output file",
    advice: str = "pass --force to replace it, or another name",
) -> None:
    """Refuse to replace an existing file unless forced, a folder, and a path that could not
    be created."""
    path = Path(path)
    if path.is_dir():
        raise RunDirError(f"{path} is a folder; give a file name")
    if path.exists() and not force:
        raise RunDirError(f"{path} already exists; {advice}")
    check_output_location(path, option)


def claim_folder(folder: Path) -> int | None:
    """Claim folder for this process: an exclusive flock on folder/CLAIM_FILE, which then
    holds '<host> <pid>' for the messages of those refused. Returns the lock's file
    descriptor (keep it open while the folder is in use), or None when another process holds
    the claim.

    Of two processes that try at once exactly one wins, and the kernel drops the lock when
    its process dies (SIGKILL, out of memory), so the claim of a dead run is never in the way;
    a CLAIM_FILE left behind is just a file.
    """
    path = Path(folder) / CLAIM_FILE
    if fcntl is None:
        return -1
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        # The holder before us removes the file as it lets go: if it did so after we opened
        # the file, we hold the lock of a file that no longer has the name; try again.
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
    return fd


def release_claim(folder: Path, fd: int) -> None:
    """Let go of claim_folder's claim: remove CLAIM_FILE (still locked, so no one else holds
    the name), then unlock by closing."""
    if fd < 0:
        return
    (Path(folder) / CLAIM_FILE).unlink(missing_ok=True)
    os.close(fd)


def claim_holder(folder: Path) -> str:
    """Who holds folder's claim, in words, from what its holder wrote into CLAIM_FILE."""
    try:
        host, pid = (Path(folder) / CLAIM_FILE).read_text().split()
    except (OSError, ValueError):  # being written right now
        return "another process"
    return f"process {pid} on {host}" if host != socket.gethostname() else f"process {pid}"
