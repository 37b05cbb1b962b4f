"""User-facing errors: each names the problem and what to do, and carries an exit code.

The CLI prints `error: <message>` on stderr and exits with `exit_code`; tracebacks only
with `--debug`. Internal bugs are not TlcliErrors and crash loudly.
"""

from __future__ import annotations

import errno
import reprlib
import signal
import unicodedata
from collections.abc import Iterator

# Exit codes, documented in the README. 1 is left to unexpected crashes, 2 to typer's
# own usage errors, 130 to Ctrl-C and 143 to SIGTERM (128 + the signal, the shell convention).
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_MODEL = 4
EXIT_CHECKPOINT = 5
EXIT_RUN_DIR = 6
EXIT_RESOURCE = 7
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM

# errno values that mean "out of disk" to the user: no space, quota, file size limit.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

# An error is one line a person reads: a longer one is cut in its middle, so the problem (its
# start) and what to do (its end) stay. A 421-byte YAML alias bomb once made a 39 MB "line".
MAX_MESSAGE_CHARS = 1000  # room for three long paths (a file, last.pt, the resume command)
# A user's value quoted in a message (a config value of the wrong type, say).
MAX_VALUE_CHARS = 80
ELISION = " ... "
# Characters a terminal acts on rather than shows (ESC starts a sequence that can clear the
# screen, a newline forges a line), or that reorder the text around them (bidi controls).
_CONTROL_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f" + "".join(map(chr, range(0x202A, 0x202F))))
_BIDI_CONTROLS |= frozenset(map(chr, range(0x2066, 0x206A)))
# os.fsdecode turns each byte that is not UTF-8 into one of these (PEP 383 surrogateescape).
_SURROGATE_ESCAPES = range(0xDC80, 0xDD00)


def _escape_char(char: str) -> str:
    code = ord(char)
    if code in _SURROGATE_ESCAPES:
        return f"\\x{code - 0xDC00:02x}"  # the byte of a non-UTF-8 name, as Python spells it
    if 0xD800 <= code <= 0xDFFF or char in _BIDI_CONTROLS:
        return f"\\u{code:04x}"
    if unicodedata.category(char) in _CONTROL_CATEGORIES:
        return repr(char)[1:-1] if code < 0x100 else f"\\u{code:04x}"
    return char


def printable(text: object) -> str:
    """text with every control character and undecodable byte spelled out (`\\n`, `\\x1b`,
    `\\xe9`): what every printer (errors, warnings, tables, CSV cells) shows of a name.

    A file name is data, not terminal input: printed raw, an ESC sequence in it clears the
    screen and a newline forges an `error:` line. Idempotent (the escapes are plain text), so
    a message built from already escaped parts is unchanged.
    """
    text = str(text)
    if text.isprintable():  # the common case, at C speed
        return text
    return "".join(_escape_char(c) for c in text)


def shorten(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """text cut to at most limit characters in its middle, marked by an ellipsis."""
    if len(text) <= limit:
        return text
    keep = limit - len(ELISION)
    head = (keep * 2) // 3
    return text[:head] + ELISION + text[len(text) - (keep - head) :]


def _value_repr() -> reprlib.Repr:
    # reprlib stops at a few items and levels: the repr of a huge value costs nothing.
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxtuple, short.maxdict = 3, 4, 4, 4
    short.maxstring = short.maxother = short.maxlong = MAX_VALUE_CHARS
    return short


_VALUE_REPR = _value_repr()


def short_repr(value: object) -> str:
    """repr(value) for a message, at most MAX_VALUE_CHARS long, whatever its size."""
    return shorten(printable(_VALUE_REPR.repr(value)), MAX_VALUE_CHARS)


class TlcliError(Exception):
    """A mistake the user can fix; the message is one line: problem, then what to do."""

    exit_code = 1

    def __init__(self, message: str):
        # The one place every user-facing message passes: one printable line, never a flood.
        message = shorten(printable(message))
        super().__init__(message)
        self.message = message


class ConfigError(TlcliError):
    """Bad option value, unknown config key, wrong type."""

    exit_code = EXIT_CONFIG


class TrainingDiverged(ConfigError):
    """The loss became inf or nan: the learning rate is too high for this model and data."""


class DataError(TlcliError):
    """The image folder cannot be used: no images, one class, bad split layout."""

    exit_code = EXIT_DATA


class FolderChanged(DataError):
    """A streamed file that decoded when the run started no longer does (deleted, rewritten)."""


def folder_changed(path: object, exc: OSError) -> FolderChanged:
    """A file the scan listed that cannot be read now: deleted or changed since."""
    return FolderChanged(
        f"{path} was in the folder when it was scanned, and now cannot be read "
        f"({exc.strerror}): the folder changed; run the command again (it scans anew)"
    )


class ModelError(TlcliError):
    """The model cannot be created or its pretrained weights cannot be had."""

    exit_code = EXIT_MODEL


class CheckpointError(TlcliError):
    """A file is not a tlcli checkpoint, is corrupt, or does not fit the data."""

    exit_code = EXIT_CHECKPOINT


class Interrupted(TlcliError):
    """Ctrl-C or SIGTERM: what was finished is saved; the message says how to go on."""

    def __init__(self, message: str):
        from tlcli.interrupt import interrupted_exit_code

        super().__init__(message)
        self.exit_code = interrupted_exit_code()


class RunDirError(TlcliError):
    """The run directory exists (and we never overwrite) or cannot be resumed."""

    exit_code = EXIT_RUN_DIR


class ResourceError(TlcliError):
    """Out of disk or device memory."""

    exit_code = EXIT_RESOURCE


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """exc, then what it was raised from or while handling, and so on."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def disk_error_of(exc: BaseException | None) -> OSError | None:
    """The out-of-disk OSError behind exc, if any.

    torch.save reports a failed write to its file handle as a RuntimeError whose
    __context__ is the OSError, so the whole chain is searched.
    """
    for item in exception_chain(exc):
        if isinstance(item, OSError) and item.errno in DISK_FULL_ERRNOS:
            return item
    return None


def resource_error_of(exc: BaseException) -> ResourceError | None:
    """A full disk or an exhausted GPU anywhere in a command, as a one-line user error.

    The library raises precise ResourceErrors where it can (checkpoints, the training
    step); this is the net for every other write and forward pass.
    """
    disk = disk_error_of(exc)
    if disk is not None:
        where = f" while writing {disk.filename}" if disk.filename else ""
        return ResourceError(
            f"disk full{where} ({disk.strerror}): free space or write elsewhere, and run again"
        )
    # By name: the CLI must not import torch to recognise torch.OutOfMemoryError.
    if type(exc).__name__ == "OutOfMemoryError" and type(exc).__module__.startswith("torch"):
        return ResourceError("out of GPU memory: run again with a smaller --batch-size")
    return None
