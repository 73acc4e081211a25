"""Assertions shared by the test files (imported as a plain module: pytest puts tests/ on sys.path)."""

from __future__ import annotations


def one_line(err: str) -> str:
    """The error a user sees: one line, no traceback."""
    err = err.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    return err
