"""Target registry: every device edgetl can export for and bench on, and what this machine has for it.

A ``Target`` says which artifact it needs (format, static shapes, quantization scheme, I/O dtype), how
that artifact is compiled, how it runs, and ``availability()``: ``hardware`` (the device is here),
``simulator`` (a vendor simulator runs the compiled artifact: Qualcomm's HTP simulator on x86),
``estimator`` (a vendor compiler estimates latency and memory: Arm Vela) or ``none`` (with what to
install). ``cpu``, ``gpu`` and ``npu`` stay valid names: ``resolve`` maps them to the first target of
that kind that is available at the levels asked for.

Probes are cheap (no TensorFlow import, no model load), so ``edgetl targets`` answers in about a second.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import DeviceUnavailable, UsageError

KINDS = ("cpu", "gpu", "npu")
LEVELS = ("hardware", "simulator", "estimator", "none")
QNN_EXTRA = ".[qnn]"
ETHOS_U_EXTRA = ".[ethos-u]"
# Vela 5.2.0's --accelerator-config choices (``vela --help``); each is its own target.
ETHOS_U_CONFIGS = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256",
                   "ethos-u65-512", "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024",
                   "ethos-u85-2048")


@dataclass(frozen=True)
class Availability:
    level: str  # hardware | simulator | estimator | none
    detail: str  # what was found, or what is missing
    install: str | None = None  # the extra / package that would make it available

    @property
    def available(self) -> bool:
        return self.level != "none"


@dataclass(frozen=True)
class ArtifactSpec:
    format: str  # onnx | tflite | openvino | keras
    static_shapes: bool
    quantization: str
    io_dtype: str


@dataclass(frozen=True)
class Target:
    name: str
    kind: str  # cpu | gpu | npu
    description: str
    artifact: ArtifactSpec
    compiled_by: str
    runs_on: str
    probe: Callable[[], Availability] = field(repr=False, compare=False)
    device: str = ""  # the runtime device word backends.open_backend takes (cpu | gpu | npu)

    def availability(self) -> Availability:
        try:
            return self.probe()
        except Exception as exc:  # a broken vendor install reads as "none", with why
            return Availability("none", f"probe failed: {str(exc).splitlines()[0][:160]}")

    def describe(self) -> dict[str, Any]:
        found = self.availability()
        return {"name": self.name, "kind": self.kind, "description": self.description,
                "artifact": asdict(self.artifact), "compiled_by": self.compiled_by, "runs_on": self.runs_on,
                "availability": asdict(found)}

    @property
    def vela_config(self) -> str | None:
        return self.name.split(":", 1)[1] if self.name.startswith("npu:ethos-u") else None


# -- probes ------------------------------------------------------------------------------------------
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


# -- the registry ------------------------------------------------------------------------------------
def _ethos_u_target(config: str) -> Target:
    return Target(
        name=f"npu:{config}", kind="npu", device="npu",
        description=f"Arm {config.split('-')[1].upper()} microNPU, {config.rsplit('-', 1)[1]} MACs/cycle",
        artifact=ArtifactSpec("tflite", True, "full integer int8 (per-channel weights, per-tensor activations)",
                              "int8"),
        compiled_by=f"Vela --accelerator-config {config} (ethos-u-vela; batch 1)",
        runs_on="Ethos-U driver + TFLite Micro / LiteRT ethos-u delegate; here: Vela estimate + LiteRT "
                "reference kernels",
        probe=probe_ethos_u(config))


def _build() -> dict[str, Target]:
    entries = [
        Target("cpu", "cpu", "this machine's CPU",
               ArtifactSpec("onnx|tflite|openvino", False, "fp32 | fp16 | dynamic | int8", "float32 | uint8"),
               "tf2onnx / TFLite converter / openvino.convert_model", "onnxruntime / LiteRT / OpenVINO CPU",
               probe_cpu, "cpu"),
        Target("gpu:cuda", "gpu", "NVIDIA GPU, ONNX Runtime CUDA EP",
               ArtifactSpec("onnx", False, "fp32 | fp16", "float32"), "tf2onnx", "onnxruntime CUDAExecutionProvider",
               probe_ort_gpu("CUDAExecutionProvider", "pip install onnxruntime-gpu (in place of onnxruntime)"),
               "gpu"),
        Target("gpu:tensorrt", "gpu", "NVIDIA GPU, ONNX Runtime TensorRT EP",
               ArtifactSpec("onnx", False, "fp32 | fp16 | int8 (QDQ)", "float32"), "tf2onnx; TensorRT engine at load",
               "onnxruntime TensorrtExecutionProvider",
               probe_ort_gpu("TensorrtExecutionProvider", "pip install onnxruntime-gpu tensorrt"), "gpu"),
        Target("gpu:openvino", "gpu", "Intel GPU through OpenVINO",
               ArtifactSpec("openvino", False, "fp32 | fp16 | int8 (NNCF)", "float32 | uint8"),
               "openvino.convert_model; GPU plugin compiles at load", "OpenVINO GPU plugin",
               probe_openvino_device("GPU", "an Intel GPU with its compute runtime (intel-opencl-icd)"), "gpu"),
        Target("gpu:litert", "gpu", "mobile GPU through the LiteRT GPU delegate",
               ArtifactSpec("tflite", False, "fp32 | fp16", "float32"), "TFLite converter",
               "LiteRT GPU delegate", probe_litert_gpu, "gpu"),
        Target("gpu:keras", "gpu", "the FP32 Keras reference on an NVIDIA GPU",
               ArtifactSpec("keras", False, "fp32", "float32"), "none (model.keras)", "TensorFlow on CUDA",
               probe_keras_gpu, "gpu"),
        Target("npu:qnn-htp", "npu", "Qualcomm Hexagon NPU (HTP), ONNX Runtime QNN EP",
               ArtifactSpec("onnx", True, "QDQ uint8 activations / int8 per-channel weights "
                                          "(batch 1)", "float32 (Q/DQ at the edges)"),
               "ONNX Runtime QNN EP -> EPContext model (QNN context binary) for --soc",
               "onnxruntime + onnxruntime-qnn HTP backend; here: Qualcomm's HTP simulator", probe_qnn, "npu"),
        *[_ethos_u_target(config) for config in ETHOS_U_CONFIGS],
        Target("npu:intel", "npu", "Intel Core Ultra NPU through OpenVINO",
               ArtifactSpec("openvino", True, "int8 (NNCF) | fp16", "float32 | uint8"),
               "openvino.convert_model; NPU plugin compiles at load", "OpenVINO NPU plugin",
               probe_openvino_device("NPU", "an Intel Core Ultra NPU with its Linux driver (intel/linux-npu-driver)"),
               "npu"),
    ]
    return {target.name: target for target in entries}


REGISTRY: dict[str, Target] = _build()


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> Target:
    """A target by its exact name (``npu:qnn-htp``); ``resolve`` also takes ``cpu``/``gpu``/``npu``."""
    if name not in REGISTRY:
        raise UsageError(f"unknown target {name!r}; `edgetl targets` lists them (e.g. cpu, gpu, npu, "
                         f"npu:qnn-htp, npu:ethos-u55-256, gpu:cuda)")
    return REGISTRY[name]


def resolve(name: str, levels: tuple[str, ...] = ("hardware",)) -> Target:
    """``cpu``/``gpu``/``npu`` -> the first target of that kind available at one of ``levels``
    (hardware before simulator before estimator); any other name must be registered and available
    at one of ``levels``, else ``DeviceUnavailable`` (exit 3) naming what is missing."""
    if name in KINDS and name != "cpu":
        candidates = [t for t in REGISTRY.values() if t.kind == name and t.name != "gpu:keras"]
        found = {t.name: t.availability() for t in candidates}
        for level in LEVELS:
            if level in levels:
                for target in candidates:
                    if found[target.name].level == level:
                        return target
        seen = "; ".join(f"{n}: {a.level}" for n, a in found.items())
        raise DeviceUnavailable(f"no {name} target available as {'/'.join(levels)} on this machine ({seen})")
    target = get(name)
    check_available(target, levels)
    return target


def check_available(target: Target, levels: tuple[str, ...]) -> Availability:
    found = target.availability()
    if found.level in levels:
        return found
    if found.level == "none":
        install = f"; install: {found.install}" if found.install else ""
        raise DeviceUnavailable(f"{target.name} is not available here: {found.detail}{install}")
    raise DeviceUnavailable(f"no {target.description} on this machine (it has only the {found.level}: "
                            f"{found.detail}); pass --simulate for {found.level} figures")


def preflight_export(config) -> Target:
    """``export --target``'s cheap checks, before TensorFlow loads: the target exists, its compiler is
    installed (``DeviceUnavailable`` naming the extra, exit 3), calibration images are given."""
    target = resolve(config.target, ("hardware", "simulator", "estimator")) if config.target in KINDS \
        else get(config.target)
    if target.kind == "npu" and target.name != "npu:intel":
        if config.calib is None:
            raise UsageError(f"--target {target.name} needs a full-integer model: pass --calib DIR")
        found = target.availability()
        if found.level == "none":
            raise DeviceUnavailable(f"--target {target.name}: {found.detail}; {found.install}")
    return target


def table() -> list[dict[str, Any]]:
    return [target.describe() for target in REGISTRY.values()]


def render_table(rows: list[dict[str, Any]]) -> str:
    header = ("target", "kind", "here", "artifact", "static", "quantization", "io", "compiled by")
    lines = [header]
    for row in rows:
        art, found = row["artifact"], row["availability"]
        here = found["level"] + (f" ({found['install']})" if found["level"] == "none" and found["install"] else "")
        lines.append((row["name"], row["kind"], here, art["format"], "yes" if art["static_shapes"] else "no",
                      art["quantization"], art["io_dtype"], row["compiled_by"]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


__all__ = ["Target", "ArtifactSpec", "Availability", "REGISTRY", "get", "resolve", "check_available", "names",
           "preflight_export",
           "table", "render_table", "QNN_EXTRA", "ETHOS_U_EXTRA", "ETHOS_U_CONFIGS"]
