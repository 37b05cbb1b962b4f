"""Ctrl-C that is never lost.

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

_pending = False


def _on_sigint(signum, frame) -> None:
    global _pending
    _pending = True
    raise KeyboardInterrupt


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed and its first raise was swallowed."""
    global _pending
    if _pending:
        _pending = False
        raise KeyboardInterrupt


@contextmanager
def recorded_sigint() -> Iterator[None]:
    """Record Ctrl-C for the duration of a command.

    Left alone off the main thread (signals are delivered there only) and when SIGINT is
    ignored, as it is for a background job: such a process must not become interruptible.
    """
    global _pending
    _pending = False
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if on_main else None
    install = on_main and previous not in (signal.SIG_IGN, None)
    previous_hook = sys.unraisablehook
    if install:
        signal.signal(signal.SIGINT, _on_sigint)

        def hook(unraisable) -> None:
            # The dropped Ctrl-C is raised again by raise_if_interrupted: do not print
            # CPython's "Exception ignored ... Traceback ... KeyboardInterrupt" for it.
            if not isinstance(unraisable.exc_value, KeyboardInterrupt):
                previous_hook(unraisable)

        sys.unraisablehook = hook
    try:
        yield
    finally:
        if install:
            signal.signal(signal.SIGINT, previous)
            sys.unraisablehook = previous_hook
        _pending = False
