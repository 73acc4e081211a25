"""The names the export stage offers, all derived from the backend registry (``backends.BACKENDS``):
formats, modes, input dtypes, file extensions, what each format supports here, artifact file names."""

from __future__ import annotations

from ..choices import InputDtype, Mode, values
from .backends import BACKENDS, get_backend

FORMATS = tuple(fmt.value for fmt in BACKENDS)
MODES = values(Mode)
INPUT_DTYPES = values(InputDtype)
EXTENSIONS = {fmt.value: backend.extension for fmt, backend in BACKENDS.items()}
SUMMARY_FILE = "export_summary.json"
CALIBRATION_FILE = "calibration.json"


def supported_modes() -> dict[str, tuple[str, ...]]:
    """Which modes each format can produce with the installed packages."""
    return {fmt.value: tuple(mode.value for mode in backend.modes) for fmt, backend in BACKENDS.items()}


def artifact_name(fmt: str, mode: str, input_dtype: str) -> str:
    return f"model_{fmt}_{mode}{'_u8' if input_dtype == InputDtype.UINT8 else ''}{get_backend(fmt).extension}"
