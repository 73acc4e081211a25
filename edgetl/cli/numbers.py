"""Every float option of every command refuses NaN and infinities.

Python's ``float()`` (and click's FLOAT type) accepts "nan", "inf" and "-infinity"; a NaN slips past
every ``x < 0`` or ``0 < x <= 1`` range check (each comparison is False) and an infinity past the
upper ones, to fail deep inside training or be written into a report. One check on the parsed
values of every command of the app (``finite_floats``), so options added later get it too; ``finite``
is the same rule for numbers parsed out of comma-separated strings.
"""

from __future__ import annotations

import functools
import math

from ..errors import UsageError


def finite_floats(command) -> None:
    """Every command under ``command`` (a click group) refuses a NaN or infinite float option: its
    callback is wrapped to check the parsed values first (typer's own parameter types vary between
    versions; the parsed values do not)."""
    callback = getattr(command, "callback", None)
    if callback is not None and not getattr(callback, "_finite_floats", False):
        flags = {param.name: (param.opts or [param.name])[0] for param in getattr(command, "params", [])}

        @functools.wraps(callback)
        def checked(*args, **kwargs):
            for name, value in kwargs.items():
                for item in value if isinstance(value, (list, tuple)) else (value,):
                    if isinstance(item, float) and not math.isfinite(item):
                        raise UsageError(f"{flags.get(name, name)} takes a finite number, got {item}")
            return callback(*args, **kwargs)

        checked._finite_floats = True
        command.callback = checked
    for sub in getattr(command, "commands", {}).values():
        finite_floats(sub)


def finite(text: str, option: str) -> float:
    """``float(text)`` for one item of a comma-separated option; a UsageError line for NaN/inf."""
    try:
        number = float(text)
    except ValueError:
        raise UsageError(f"{option} takes numbers, got {text!r}") from None
    if not math.isfinite(number):
        raise UsageError(f"{option} takes finite numbers, got {text!r}")
    return number
