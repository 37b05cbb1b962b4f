"""Ctrl-C and SIGTERM that are never lost.

Both stop a command the same way: the training loop saves nothing half-done, `last.pt` keeps
the last finished epoch and the exit code is 128 + the signal (130 for Ctrl-C, 143 for
SIGTERM, as a shell reports them). SIGTERM is what `kill`, `timeout`, systemd, Docker,
Kubernetes and batch schedulers send before SIGKILL, so it gets the orderly stop too.

CPython runs a signal handler between any two bytecodes, also inside a weakref callback or a
`__del__` method; a KeyboardInterrupt raised there is printed as "Exception ignored" and
dropped (matplotlib and torch run many such callbacks), and the command would go on as if
nothing had happened. The CLI's handler also records the signal, and the CLI's progress
reporter calls `raise_if_interrupted` to raise it again at the next progress step.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_pending: int | None = None  # a signal whose KeyboardInterrupt may have been swallowed
_last: int = signal.SIGINT  # the signal that stopped the command


def _on_stop_signal(signum, frame) -> None:
    global _pending, _last
    _pending = _last = signum
    raise KeyboardInterrupt


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if a stop signal came and its first raise was swallowed."""
    global _pending
    if _pending is not None:
        _pending = None
        raise KeyboardInterrupt


def interrupted_exit_code() -> int:
    """128 + the signal that stopped the command: the shell's convention."""
    return 128 + int(_last)


def interrupted_word() -> str:
    """How the stop reads in a message: Ctrl-C interrupts, SIGTERM terminates."""
    return "terminated (SIGTERM)" if _last == signal.SIGTERM else "interrupted"


@contextmanager
def recorded_stop_signals() -> Iterator[None]:
    """Record Ctrl-C and SIGTERM for the duration of a command.

    Left alone off the main thread (signals are delivered there only) and for a signal that
    is ignored, as SIGINT is for a background job: such a process must not become
    interruptible.
    """
    global _pending, _last
    _pending, _last = None, signal.SIGINT
    on_main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS} if on_main else {}
    installed = [s for s, handler in previous.items() if handler not in (signal.SIG_IGN, None)]
    previous_hook = sys.unraisablehook
    for s in installed:
        signal.signal(s, _on_stop_signal)
    if _held and installed:  # came while the CLI was starting: stop now
        _last = _held[0]
        _held.clear()
        for s in installed:
            signal.signal(s, previous[s])
        raise KeyboardInterrupt
    if installed:

        def hook(unraisable) -> None:
            # The dropped stop is raised again by raise_if_interrupted: do not print
            # CPython's "Exception ignored ... Traceback ... KeyboardInterrupt" for it.
            if not isinstance(unraisable.exc_value, KeyboardInterrupt):
                previous_hook(unraisable)

        sys.unraisablehook = hook
    try:
        yield
    finally:
        for s in installed:
            signal.signal(s, previous[s])
        sys.unraisablehook = previous_hook
        _pending = None


@contextmanager
def deferred_stop_signals() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back while importing torch and the CLI, then raise them.

    A KeyboardInterrupt raised in the middle of torch's import leaves its C++ half
    initialised: the interpreter then died at exit (abort, exit 134) or in a RecursionError.
    The import always finishes; a stop that came meanwhile is raised right after it.
    """
    global _pending, _last
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    installed = [s for s, handler in previous.items() if handler not in (signal.SIG_IGN, None)]
    held: list[int] = []
    for s in installed:
        signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for s in installed:
            signal.signal(s, previous[s])
    if held:
        _last = held[0]
        raise KeyboardInterrupt


_held: list[int] = []  # stop signals that came before a command's handler was installed


def _hold(signum, frame) -> None:
    _held.append(signum)


def hold_stop_signals() -> None:
    """From the start of the process until a command runs: record Ctrl-C and SIGTERM, raise
    nothing. recorded_stop_signals raises a held one as soon as the command starts, so a
    Ctrl-C while Python imports the CLI and torch (the first seconds) ends as one line,
    exit 130, instead of a traceback, a RecursionError or an abort."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in STOP_SIGNALS:
        if signal.getsignal(s) not in (signal.SIG_IGN, None):
            signal.signal(s, _hold)


def run_entry_point(load_main: Callable[[], Callable[[], Any]]) -> None:
    """The `tlcli` script: hold stop signals, import the CLI, run it."""
    hold_stop_signals()
    load_main()()
