"""What edgetl itself says on stderr, apart from the converters' and runtimes' own chatter.

* ``stderr``: a stream for edgetl's messages (progress lines, warnings through logging). It writes to
  the terminal even while ``quiet_native_stderr`` hides everything else.
* ``quiet_native_stderr()``: points file descriptor 2 at a temporary file (C++ chatter of TensorFlow,
  the TFLite converter's "fully_quantize: 0 ...", LiteRT's XNNPACK INFO lines) and ``sys.stderr`` at
  the same sink (Python warnings such as "Statistics for quantized inputs were expected", NNCF's
  tables), for the duration of a command. ``edgetl --verbose`` leaves both alone.
* ``say(message, enabled)``: one progress line on ``stderr`` (``enabled``: the command's ``verbose``),
  the one print helper of the library modules.
* ``progress(total, description)``: a rich progress bar (with an ETA) on stderr when it is a terminal (nothing
  otherwise: logs and CI output stay plain lines).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from typing import Iterator

_terminal = None  # where edgetl's own messages go while stderr is quiet
_live = None  # the rich console of the progress bar on screen, if any


class _EdgetlStderr(io.TextIOBase):
    """Proxy: the saved terminal stream while stderr is quiet, else whatever sys.stderr is now."""

    def _target(self):
        return _terminal if _terminal is not None else sys.stderr

    _pending = ""

    def write(self, text: str) -> int:
        if _live is None:
            return self._target().write(text)
        # While a bar is on screen, whole lines go above it through its console.
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            _live.print(line, markup=False, highlight=False, soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        try:
            return self._target().isatty()
        except (AttributeError, ValueError):
            return False


stderr = _EdgetlStderr()


def say(message: str, enabled: bool = True) -> None:
    """One line of edgetl's progress on stderr; ``enabled`` is the caller's ``verbose``."""
    if enabled:
        print(message, file=stderr, flush=True)


@contextlib.contextmanager
def quiet_native_stderr(enabled: bool = True) -> Iterator[None]:
    global _terminal
    if not enabled or _terminal is not None:
        yield
        return
    sys.stderr.flush()
    try:
        sys.stderr.fileno()
        real_fd = True
    except (AttributeError, ValueError, io.UnsupportedOperation):
        real_fd = False  # a captured stream (pytest's capsys): keep writing to it
    saved_fd = os.dup(2)
    terminal = os.fdopen(os.dup(2), "w", buffering=1) if real_fd else sys.stderr
    saved_stream = sys.stderr
    with tempfile.TemporaryFile(mode="w+b", prefix="edgetl-stderr-") as sink:
        os.dup2(sink.fileno(), 2)
        sink_stream = io.TextIOWrapper(os.fdopen(os.dup(sink.fileno()), "wb"), write_through=True)
        _terminal, sys.stderr = terminal, sink_stream
        try:
            yield
        finally:
            _terminal, sys.stderr = None, saved_stream
            sink_stream.close()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            if real_fd:
                terminal.close()


class _Progress:
    def __init__(self, bar, task):
        self._bar, self._task = bar, task

    def advance(self, steps: int = 1, description: str | None = None) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=steps, **({"description": description} if description else {}))

    def describe(self, description: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=description)

    def print(self, message: str) -> None:
        """A line above the bar (or a plain line when there is no bar)."""
        say(message)


@contextlib.contextmanager
def progress(total: int, description: str, enabled: bool = True) -> Iterator[_Progress]:
    if not enabled or not stderr.isatty():
        yield _Progress(None, None)
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    global _live
    if _live is not None:  # one bar at a time (a stage inside a stage keeps the outer bar)
        yield _Progress(None, None)
        return
    console = Console(file=_terminal if _terminal is not None else sys.stderr, force_terminal=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=True, redirect_stdout=False, redirect_stderr=False) as bar:
        _live = console
        try:
            yield _Progress(bar, bar.add_task(description, total=total))
        finally:
            _live = None
