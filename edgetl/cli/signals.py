"""SIGTERM as an exception (``Terminated``), deferred while Python is inside an import, and the
clean exit after an interrupt."""

from __future__ import annotations

import contextlib
import gc
import signal
import sys
import threading

from ..errors import TERMINATION_REQUESTED, Terminated


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    TERMINATION_REQUESTED.set()
    if not _inside_import(frame):
        raise Terminated()
    # An exception inside a native module's import (TensorFlow's) leaves it half-initialised, which can
    # crash the process later; the writers raise it at their next commit (errors.raise_if_terminated).


def _inside_import(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def _sigterm_as_exception():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    TERMINATION_REQUESTED.clear()  # a new command in this process (tests call main() repeatedly)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _drop_interrupted_finalizers() -> None:
    """A signal that lands mid-import leaves native modules (TensorFlow's ApiDefMap) half-initialised;
    their finalizers raise "Exception ignored in ..." tracebacks (or crash) when the garbage collector
    runs them, after the one line edgetl prints. The clean-up is done by now and the process is about to
    exit (``entry``: without finalization), so the collector stays off and such reports are dropped."""
    gc.disable()
    sys.unraisablehook = lambda unraisable: None
