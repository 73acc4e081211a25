"""One exception type for every user-facing failure.

The CLI turns an ``EdgetlError`` into a single line on stderr and its ``exit_code``; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import threading


class EdgetlError(Exception):
    """A failure the user can act on: bad input, missing weights, unavailable device."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(EdgetlError):
    """Bad arguments or bad input data (exit 2)."""

    exit_code = 2


class CheckFailed(EdgetlError):
    """An artifact was written but failed a quality check, or an artifact file is unusable (exit 1)."""

    exit_code = 1


class DeviceUnavailable(EdgetlError):
    """The requested target has no device on this machine (exit 3)."""

    exit_code = 3


class Terminated(BaseException):
    """SIGTERM (``edgetl.cli`` turns the signal into this), raised where Python next runs: every
    ``finally``/``except BaseException`` cleans up as for Ctrl-C. Not a KeyboardInterrupt, so it reaches
    the CLI's ``main``."""


# Set once SIGTERM arrived. Python delivers the exception wherever the main thread runs next, also
# inside a finalizer, where it is swallowed: writers check this before they commit, so a swallowed
# SIGTERM still never lets a result land.
TERMINATION_REQUESTED = threading.Event()


def raise_if_terminated() -> None:
    if TERMINATION_REQUESTED.is_set():
        raise Terminated()
