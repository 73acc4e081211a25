"""What files an exported artifact is, by format: the suffix that names its format and the companion
files it cannot load without (OpenVINO: the ``.bin`` weights beside the ``.xml``), and where inside
each container export embeds its description.

Plain data and path arithmetic, no runtime: ``metadata`` (hashing and verifying an artifact's files) and
``runtime.backends`` (picking and loading a backend) both read it, so neither imports the other for it.
Adding a format adds its line here and its backend class in ``runtime.backends.registry``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError


@dataclass(frozen=True)
class FileLayout:
    suffix: str  # of the main file, which names the format
    companions: tuple[str, ...] = ()  # suffixes of the files beside it with the same stem


LAYOUTS: dict[str, FileLayout] = {"onnx": FileLayout(".onnx"), "openvino": FileLayout(".xml", (".bin",)),
                                  "tflite": FileLayout(".tflite")}
FORMAT_BY_SUFFIX: dict[str, str] = {layout.suffix: fmt for fmt, layout in LAYOUTS.items()}
# Where export embeds its description inside each container (``runtime.embedded`` reads it back):
EMBEDDED_KEY = "edgetl"  # ONNX metadata_props key; OpenVINO rt_info section
TFLITE_FILE = "edgetl.json"  # associated file inside a .tflite


def format_of(path: str | Path) -> str | None:
    """The format a file's suffix names, or None."""
    return FORMAT_BY_SUFFIX.get(Path(path).suffix.lower())


def artifact_format(path: str | Path) -> str:
    """The format a file's suffix names; a ``UsageError`` naming the known suffixes otherwise."""
    fmt = format_of(path)
    if fmt is None:
        *first, last = sorted(FORMAT_BY_SUFFIX)
        suffix = Path(path).suffix.lower()
        raise UsageError(f"{path}: unknown artifact type {suffix or '(none)'}; expected {', '.join(first)} or {last}")
    return fmt


def companion_files(path: str | Path, fmt: str | None = None) -> list[Path]:
    """The files an artifact cannot load without, beside ``path`` itself."""
    layout = LAYOUTS.get(fmt or format_of(path) or "")
    return [Path(path).with_suffix(suffix) for suffix in layout.companions] if layout else []


def artifact_files(path: str | Path) -> list[Path]:
    """Every file of an artifact, main file first."""
    return [Path(path), *companion_files(path)]
