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
from collections.abc import Iterator
from contextlib import contextmanager

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
