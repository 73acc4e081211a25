"""One marked section of a tools/RESULTS-*.md file, replaced in place so other tools' sections stay."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, begin: str, end: str, section: str, new_at_start: bool = False) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) where the marked section is in
    ``path``; a file without one gets it appended (or put first with ``new_at_start``)."""
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    elif new_at_start:
        text = section + "\n" + text
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
