"""Which backend runs an artifact: the registry {format: backend class} and the functions that pick one.

Adding a format is one backend module (a ``Backend`` subclass), one line in ``BACKENDS`` and its file
layout in ``edgetl.artifact_layout`` (suffix, companion files); every per-format table below is read off
the classes.
"""

from __future__ import annotations

from pathlib import Path

from ...artifact_layout import FORMAT_BY_SUFFIX, artifact_format  # noqa: F401  (part of the registry API)
from ...errors import CheckFailed, UsageError
from .base import DEVICES, Backend
from .onnx import OnnxBackend
from .openvino import OpenVinoBackend
from .tflite import TfliteBackend

# The order is the order of every per-format listing (available_devices, target_devices, bench.json).
BACKENDS: dict[str, type[Backend]] = {"onnx": OnnxBackend, "openvino": OpenVinoBackend, "tflite": TfliteBackend}

RUNTIME_BY_FORMAT = {fmt: cls.runtime for fmt, cls in BACKENDS.items()}
PIP_EXTRA = {fmt: cls.pip_extra for fmt, cls in BACKENDS.items()}
# Options an app may pass for any artifact: a backend without such a switch ignores them (any other
# option a backend does not take is a TypeError, as a typo should be).
SHARED_OPTIONS = frozenset({"exact_int8", "soc", "allow_cpu_fallback"})


def backend_class(fmt: str) -> type[Backend]:
    """The backend class of a format (the sidecar's "format")."""
    if fmt not in BACKENDS:
        raise UsageError(f"unknown artifact format {fmt!r}; expected {', '.join(BACKENDS)}")
    return BACKENDS[fmt]


def open_backend(path: str | Path, device: str = "cpu", threads: int | None = None, **options) -> Backend:
    """Load an artifact on the backend its suffix names. ``device``: cpu | gpu | npu; ``options`` go to the
    backend (``exact_int8``: ONNX Runtime; ``precision``: OpenVINO; ``soc``, ``allow_cpu_fallback``,
    ``simulate``: QNN HTP); the shared ones are ignored by backends that have no such switch."""
    path = Path(path)
    cls = BACKENDS[artifact_format(path)]
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}; choose {', '.join(DEVICES[:-1])} or {DEVICES[-1]}")
    if not path.exists():
        raise UsageError(f"{path}: no such artifact")
    for companion in cls.companion_files(path):
        if not companion.exists():
            raise CheckFailed(f"{path}: its weights file {companion.name} is missing")
    cls = cls.for_device(device, options.pop("simulate", False))
    ignored = SHARED_OPTIONS - cls.options
    return cls(path, device, threads, **{k: v for k, v in options.items() if k not in ignored})


def available_devices() -> dict[str, list[str]]:
    """What each installed runtime reports, for 'target unavailable' messages and the bench report."""
    found = {cls.runtime: cls.reported_devices() for cls in BACKENDS.values()}
    return {runtime: devices for runtime, devices in found.items() if devices is not None}


def target_devices(target: str, available: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Per artifact format, the devices of this machine that serve ``target`` (empty list: none)."""
    available = available_devices() if available is None else available
    return {fmt: cls.devices_for(target, available) for fmt, cls in BACKENDS.items()}


def import_runtime(module: str, fmt: str):
    """Import a format's runtime module, or say in one line which extra installs it."""
    return backend_class(fmt).require(module)
