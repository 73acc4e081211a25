"""The one interface every runtime backend implements (numpy in, numpy out; no TensorFlow).

A backend takes a batch already in the artifact's input dtype/layout (float32, or uint8 for uint8-input
artifacts) and returns float32 outputs, dequantizing integer outputs itself. Each format is one sibling
module (``onnx``, ``tflite``, ``openvino``; ``qnn`` is ONNX on Qualcomm's HTP) and one line of the
registry in ``backends/registry.py``; ``open_backend`` (``registry``) picks the class from the suffix
(``edgetl.artifact_layout``: which suffix names which format, which files an artifact is).

A runtime that loaded an artifact can still fail on a batch (an op refusing a shape, a kernel it lacks):
every subclass's ``run`` (and ``node_placement``, which may run the graph) reports that as one
``CheckFailed`` line naming the artifact and its runtime, for every caller alike (bench rows, export
parity, ``EdgeModel.predict``), instead of the runtime's own exception.
"""

from __future__ import annotations

import functools
import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...artifact_layout import companion_files
from ...errors import CheckFailed, EdgetlError, UsageError

DEVICES = ("cpu", "gpu", "npu")


@dataclass
class Placement:
    """Where the graph ran: requested device, what the runtime used, node counts per device."""

    requested: str
    devices: list[str]
    nodes: dict[str, int] = field(default_factory=dict)

    @property
    def fell_back(self) -> bool:
        return any(d.upper().startswith("CPU") for d in self.nodes) and self.requested != "cpu"


class Backend(ABC):
    """Runs one artifact. Class attributes describe the format; ``__init__`` of each subclass loads the
    artifact and sets the instance attributes below (after ``Backend.__init__``)."""

    format: ClassVar[str]  # the sidecar's "format"
    runtime: ClassVar[str]  # the runtime's name in bench.json and messages
    pip_extra: ClassVar[str]  # what to install when the runtime is missing
    # keyword options of __init__ beyond (path, device, threads)
    options: ClassVar[frozenset[str]] = frozenset()
    # whether ``run`` may be entered from several threads at once (else EdgeModel serialises calls)
    reentrant: ClassVar[bool] = False

    input_name: str
    input_shape: list[int | None]
    input_dtype: np.dtype
    dynamic_batch: bool
    placement: Placement

    def __init_subclass__(cls, **kwargs):
        # Every format's run() reports runtime failures the same way (module docstring), written once here.
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if run is not None and not getattr(run, "reports_runtime_failures", False):
            cls.run = _reporting_runtime_failures(run)

    def runtime_failure(self, exc: Exception, batch: np.ndarray) -> CheckFailed:
        """The one line for ``exc`` raised by the runtime while it ran ``batch`` on this artifact."""
        shape = "x".join("?" if d is None else str(d) for d in np.shape(batch))
        return CheckFailed(f"{self.path}: {self.runtime} failed while running it on a {shape} batch "
                           f"({first_line(exc)})")

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None):
        self.path = Path(path)
        self.threads = threads
        # runtime settings that change numbers, recorded by parity and bench; one dict per instance
        self.settings: dict[str, str] = {}
        self.simulated = False  # True where wall time is a simulator's, never the device's latency

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Outputs (float32) for one batch in the artifact's input dtype/layout."""

    @abstractmethod
    def version(self) -> str:
        """The runtime package's version."""

    @property
    def reported_precision(self) -> str | None:
        """The compute precision to report beside the numbers (None: the artifact's own)."""
        return None

    def node_placement(self, sample: np.ndarray) -> dict[str, Any]:
        """Nodes per device as the runtime placed them (the evidence against silent CPU fallback):
        ``{"requested", "devices", "nodes": {device: count}, "method", "verified"[, "total_nodes"],
        "cpu_fallback_nodes"}``; ``sample`` is one batch the graph takes (some runtimes must run it)."""
        info: dict[str, Any] = {"requested": self.placement.requested, "devices": list(self.placement.devices),
                                "nodes": {}, "method": None, "verified": True}
        try:
            info.update(self._placement_details(sample, info["devices"]))
        except EdgetlError:
            raise
        except Exception as exc:
            raise self.runtime_failure(exc, sample) from None
        fallback = {k: v for k, v in info["nodes"].items() if k.upper().startswith("CPU")}
        info["cpu_fallback_nodes"] = sum(fallback.values()) if self.placement.requested != "cpu" else 0
        return info

    @abstractmethod
    def _placement_details(self, sample: np.ndarray, devices: list[str]) -> dict[str, Any]:
        """The format's part of ``node_placement``: any of devices, nodes, method, verified, total_nodes."""

    @classmethod
    @abstractmethod
    def reported_devices(cls) -> list[str] | None:
        """What this runtime reports it can run on (None: the runtime is not installed)."""

    @classmethod
    @abstractmethod
    def devices_for(cls, target: str, available: dict[str, list[str]] | None = None) -> list[str]:
        """The devices of this machine that serve ``target`` (cpu | gpu | npu) for this format; empty:
        none. ``available`` is ``available_devices()`` (read here when not given)."""

    @classmethod
    def _reported(cls, available: dict[str, list[str]] | None) -> list[str]:
        if available is None:
            return cls.reported_devices() or []
        return available.get(cls.runtime, [])

    @classmethod
    def companion_files(cls, path: Path) -> list[Path]:
        """Files the artifact cannot load without (beside ``path`` itself): ``artifact_layout``'s."""
        return companion_files(path, cls.format)

    @classmethod
    def embedded_text(cls, path: Path) -> str | None:
        """The edgetl description export embedded in the file (JSON text, ``runtime.embedded``), read
        without loading the model; None when the format or the file carries none."""
        return None

    @classmethod
    def for_device(cls, device: str, simulate: bool = False) -> type[Backend]:
        """The class that runs this format on ``device`` (a format may have a device-specific one)."""
        return cls

    @classmethod
    def require(cls, module: str):
        """Import the runtime's module, or say in one line which extra installs it."""
        try:
            return importlib.import_module(module)
        except ImportError:
            raise UsageError(f"the {cls.runtime} runtime is not installed; pip install '{cls.pip_extra}'") from None


def first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _reporting_runtime_failures(run):
    """``run`` with the runtime's exceptions turned into ``Backend.runtime_failure`` (edgetl's own
    errors pass through)."""
    @functools.wraps(run)
    def checked(self, batch):
        try:
            return run(self, batch)
        except EdgetlError:
            raise
        except Exception as exc:
            raise self.runtime_failure(exc, batch) from None

    checked.reports_runtime_failures = True
    return checked
