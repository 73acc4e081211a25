"""Target registry: every device edgetl can export for and bench on, and what this machine has for it.

A ``Target`` says which artifact it needs (format, static shapes, quantization scheme, I/O dtype), how
that artifact is compiled, how it runs, and ``availability()`` (``probes.py``: hardware, simulator,
estimator or none). ``cpu``, ``gpu`` and ``npu`` stay valid names: ``resolve`` maps them to the first
target of that kind that is available at the levels asked for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from ..choices import TargetKind, values
from ..errors import DeviceUnavailable, UsageError
from .probes import (LEVELS, Availability, probe_cpu, probe_ethos_u, probe_keras_gpu, probe_litert_gpu,
                     probe_openvino_device, probe_ort_gpu, probe_qnn)

KINDS = values(TargetKind)
# Vela 5.2.0's --accelerator-config choices (``vela --help``); each is its own target.
ETHOS_U_CONFIGS = ("ethos-u55-32", "ethos-u55-64", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256",
                   "ethos-u65-512", "ethos-u85-128", "ethos-u85-256", "ethos-u85-512", "ethos-u85-1024",
                   "ethos-u85-2048")
QNN_HTP = "npu:qnn-htp"


@dataclass(frozen=True)
class ArtifactSpec:
    format: str  # onnx | tflite | openvino | keras
    static_shapes: bool
    quantization: str
    io_dtype: str


@dataclass(frozen=True)
class Target:
    name: str
    kind: TargetKind
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

    @property
    def compiled_ahead(self) -> bool:
        """``export --target`` compiles a device-specific full-integer artifact for it (a QNN context
        binary, a Vela model); the other targets take the ordinary export of their format."""
        return self.name == QNN_HTP or self.vela_config is not None


# -- the registry ------------------------------------------------------------------------------------
def _ethos_u_target(config: str) -> Target:
    return Target(
        name=f"npu:{config}", kind=TargetKind.NPU, device="npu",
        description=f"Arm {config.split('-')[1].upper()} microNPU, {config.rsplit('-', 1)[1]} MACs/cycle",
        artifact=ArtifactSpec("tflite", True, "full integer int8 (per-channel weights, per-tensor activations)",
                              "int8"),
        compiled_by=f"Vela --accelerator-config {config} (ethos-u-vela; batch 1)",
        runs_on="Ethos-U driver + TFLite Micro / LiteRT ethos-u delegate; here: Vela estimate + LiteRT "
                "reference kernels",
        probe=probe_ethos_u(config))


def _build() -> dict[str, Target]:
    entries = [
        Target("cpu", TargetKind.CPU, "this machine's CPU",
               ArtifactSpec("onnx|tflite|openvino", False, "fp32 | fp16 | dynamic | int8", "float32 | uint8"),
               "tf2onnx / TFLite converter / openvino.convert_model", "onnxruntime / LiteRT / OpenVINO CPU",
               probe_cpu, "cpu"),
        Target("gpu:cuda", TargetKind.GPU, "NVIDIA GPU, ONNX Runtime CUDA EP",
               ArtifactSpec("onnx", False, "fp32 | fp16", "float32"), "tf2onnx", "onnxruntime CUDAExecutionProvider",
               probe_ort_gpu("CUDAExecutionProvider", "pip install onnxruntime-gpu (in place of onnxruntime)"),
               "gpu"),
        Target("gpu:tensorrt", TargetKind.GPU, "NVIDIA GPU, ONNX Runtime TensorRT EP",
               ArtifactSpec("onnx", False, "fp32 | fp16 | int8 (QDQ)", "float32"), "tf2onnx; TensorRT engine at load",
               "onnxruntime TensorrtExecutionProvider",
               probe_ort_gpu("TensorrtExecutionProvider", "pip install onnxruntime-gpu tensorrt"), "gpu"),
        Target("gpu:openvino", TargetKind.GPU, "Intel GPU through OpenVINO",
               ArtifactSpec("openvino", False, "fp32 | fp16 | int8 (NNCF)", "float32 | uint8"),
               "openvino.convert_model; GPU plugin compiles at load", "OpenVINO GPU plugin",
               probe_openvino_device("GPU", "an Intel GPU with its compute runtime (intel-opencl-icd)"), "gpu"),
        Target("gpu:litert", TargetKind.GPU, "mobile GPU through the LiteRT GPU delegate",
               ArtifactSpec("tflite", False, "fp32 | fp16", "float32"), "TFLite converter",
               "LiteRT GPU delegate", probe_litert_gpu, "gpu"),
        Target("gpu:keras", TargetKind.GPU, "the FP32 Keras reference on an NVIDIA GPU",
               ArtifactSpec("keras", False, "fp32", "float32"), "none (model.keras)", "TensorFlow on CUDA",
               probe_keras_gpu, "gpu"),
        Target(QNN_HTP, TargetKind.NPU, "Qualcomm Hexagon NPU (HTP), ONNX Runtime QNN EP",
               ArtifactSpec("onnx", True, "QDQ uint8 activations / int8 per-channel weights "
                                          "(batch 1)", "float32 (Q/DQ at the edges)"),
               "ONNX Runtime QNN EP -> EPContext model (QNN context binary) for --soc",
               "onnxruntime + onnxruntime-qnn HTP backend; here: Qualcomm's HTP simulator", probe_qnn, "npu"),
        *[_ethos_u_target(config) for config in ETHOS_U_CONFIGS],
        Target("npu:intel", TargetKind.NPU, "Intel Core Ultra NPU through OpenVINO",
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
    if name in KINDS and name != TargetKind.CPU:
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
    if target.compiled_ahead:
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
