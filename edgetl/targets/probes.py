"""What this machine has for each target: ``Availability`` and the probes that find it.

A probe answers ``hardware`` (the device is here), ``simulator`` (a vendor simulator runs the compiled
artifact: Qualcomm's HTP simulator on x86), ``estimator`` (a vendor compiler estimates latency and
memory: Arm Vela) or ``none`` (with what to install). Probes are cheap (no TensorFlow import, no
model load), so ``edgetl targets`` answers in about a second.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

LEVELS = ("hardware", "simulator", "estimator", "none")
QNN_EXTRA = ".[qnn]"
ETHOS_U_EXTRA = ".[ethos-u]"


@dataclass(frozen=True)
class Availability:
    level: str  # hardware | simulator | estimator | none
    detail: str  # what was found, or what is missing
    install: str | None = None  # the extra / package that would make it available

    @property
    def available(self) -> bool:
        return self.level != "none"


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _ort_providers() -> list[str]:
    if not _has_module("onnxruntime"):
        return []
    import onnxruntime

    return onnxruntime.get_available_providers()


def _openvino_devices() -> list[str]:
    if not _has_module("openvino"):
        return []
    from ..runtime.backends import openvino_core

    return list(openvino_core().available_devices)


def _nvidia_gpu() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))


def probe_cpu() -> Availability:
    return Availability("hardware", f"{platform.machine()} CPU (onnxruntime / LiteRT / OpenVINO)")


def probe_qnn() -> Availability:
    if not _has_module("onnxruntime_qnn"):
        return Availability("none", "onnxruntime-qnn is not installed", f"pip install '{QNN_EXTRA}'")
    from ..runtime import backends

    devices = backends.qnn_ep_devices()
    if not devices:
        return Availability("none", "onnxruntime-qnn registered no QNN device", f"pip install '{QNN_EXTRA}'")
    if backends.qnn_is_simulator(devices):
        return Availability("simulator", f"no Hexagon NPU on this {platform.machine()} machine; "
                                         "Qualcomm's HTP simulator (libQnnHtp.so) runs compiled models")
    return Availability("hardware", "Qualcomm Hexagon NPU (QNN HTP backend)")


def probe_ethos_u(config: str) -> Callable[[], Availability]:
    def probe() -> Availability:
        if not _has_module("ethosu.vela"):
            return Availability("none", "ethos-u-vela is not installed", f"pip install '{ETHOS_U_EXTRA}'")
        # Linux-hosted Ethos-U (U65/U85 beside a Cortex-A) shows up as the ethos-u kernel driver's node.
        if config.startswith(("ethos-u65", "ethos-u85")) and any(Path("/dev").glob("ethosu[0-9]*")):
            return Availability("hardware", "Ethos-U kernel driver device /dev/ethosu*")
        return Availability("estimator", f"no {config} here; Vela compiles and estimates latency/memory, "
                                         "LiteRT's reference kernels give its int8 numbers")
    return probe


def probe_openvino_device(device: str, needs: str) -> Callable[[], Availability]:
    """An OpenVINO plugin device (NPU, GPU, GPU.1, ...) as OpenVINO itself reports it."""
    def probe() -> Availability:
        devices = _openvino_devices()
        if any(d == device or d.startswith(f"{device}.") for d in devices):
            return Availability("hardware", f"OpenVINO {device} device")
        return Availability("none", f"OpenVINO reports no {device} (devices: {', '.join(devices) or 'none'})",
                            needs)
    return probe


def probe_ort_gpu(provider: str, package: str) -> Callable[[], Availability]:
    def probe() -> Availability:
        providers = _ort_providers()
        if provider not in providers:
            return Availability("none", f"this onnxruntime has no {provider} "
                                        f"(has: {', '.join(providers) or 'none'})", package)
        if not _nvidia_gpu():
            return Availability("none", f"{provider} is built in but no NVIDIA GPU (/dev/nvidia*) is here",
                                "an NVIDIA GPU with its driver")
        return Availability("hardware", f"NVIDIA GPU through onnxruntime {provider}")
    return probe

def probe_litert_gpu() -> Availability:
    if ctypes.util.find_library("tensorflowlite_gpu_delegate"):
        return Availability("hardware", "LiteRT GPU delegate library found")
    return Availability("none", "no LiteRT GPU delegate library (libtensorflowlite_gpu_delegate.so)",
                        "the LiteRT GPU delegate built for this machine (OpenCL/OpenGL ES GPU)")


def probe_keras_gpu() -> Availability:
    if not _nvidia_gpu():
        return Availability("none", "no NVIDIA GPU (/dev/nvidia*) for TensorFlow", "an NVIDIA GPU with its driver")
    if not _has_module("nvidia.cudnn"):
        return Availability("none", "TensorFlow's CUDA libraries are not installed", "pip install '.[gpu]'")
    return Availability("hardware", "TensorFlow on the NVIDIA GPU (CUDA libraries from .[gpu])")
