"""Inference backends behind one small interface (numpy in, numpy out; no TensorFlow).

``open_backend(path)`` picks ONNX Runtime for ``.onnx``, LiteRT for ``.tflite`` and OpenVINO for
``.xml``. A backend takes a batch already in the artifact's input dtype/layout (float32, or uint8 for
uint8-input artifacts) and returns float32 outputs, dequantizing integer outputs itself.

Used by ``EdgeModel`` (the device wrapper), by export's parity check and by the bench, so all three
run artifacts the same way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckFailed, DeviceUnavailable, UsageError
from ..metadata import sidecar_path
from .cpu import int8_dot_saturates

FORMAT_BY_SUFFIX = {".onnx": "onnx", ".tflite": "tflite", ".xml": "openvino"}
RUNTIME_BY_FORMAT = {"onnx": "onnxruntime", "tflite": "litert", "openvino": "openvino"}
PIP_EXTRA = {"onnx": "edgetl[runtime-onnx]", "tflite": "edgetl[runtime-tflite]",
             "openvino": "edgetl[runtime-openvino]"}


def artifact_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMAT_BY_SUFFIX:
        raise UsageError(f"{path}: unknown artifact type {suffix or '(none)'}; expected .onnx, .tflite or .xml")
    return FORMAT_BY_SUFFIX[suffix]


@dataclass
class Placement:
    """Where the graph ran: requested device, what the runtime used, node counts per device."""

    requested: str
    devices: list[str]
    nodes: dict[str, int] = field(default_factory=dict)

    @property
    def fell_back(self) -> bool:
        return any(d.upper().startswith("CPU") for d in self.nodes) and self.requested != "cpu"


class Backend:
    """Runs one artifact. Subclasses set the attributes below in ``__init__``."""

    format: str
    runtime: str
    input_name: str
    input_shape: list[int | None]
    input_dtype: np.dtype
    dynamic_batch: bool
    placement: Placement
    settings: dict[str, str] = {}  # runtime settings that change numbers, recorded by parity and bench

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError


def _import(module: str, fmt: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise UsageError(f"the {RUNTIME_BY_FORMAT[fmt]} runtime is not installed; "
                         f"pip install '{PIP_EXTRA[fmt]}'") from None


# -- ONNX Runtime -----------------------------------------------------------------------------------
ORT_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "gpu": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
    "npu": ["QNNExecutionProvider", "VitisAIExecutionProvider"],
}


# ORT reports tensor types as strings; "tensor(int8)" must not read as float (nor as uint8).
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
              "tensor(int8)": np.int8}


# ONNX Runtime's switch from saturating U8S8 to exact U8U8 INT8 kernels on x86 without VNNI.
ORT_EXACT_INT8 = ("session.x64quantprecision", "1")


def ort_session_options(threads: int | None = None, exact_int8: bool = True):
    """Full graph optimisation and (when asked) a fixed intra-op pool; one place for both the runtime
    and the bench so they measure the same thing.

    ``exact_int8``: on x86 CPUs without VNNI, run quantized GEMMs with ORT's U8U8 kernels instead of the
    saturating U8S8 ones (``runtime.cpu.int8_dot_saturates``). Measured on efficientnet_lite0 INT8:
    top-1 agreement with FP32 0.926 -> 0.983, latency 0.69x -> 1.00x of FP32. A no-op elsewhere, and
    skipped by ``open_backend`` for pair-safe artifacts (the fast kernels are exact on their weights)."""
    ort = _import("onnxruntime", "onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if exact_int8 and int8_dot_saturates():
        options.add_session_config_entry(*ORT_EXACT_INT8)
    return options


class OnnxBackend(Backend):
    format, runtime = "onnx", "onnxruntime"

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None, exact_int8: bool = True):
        ort = _import("onnxruntime", "onnx")
        available = ort.get_available_providers()
        wanted = [p for p in ORT_PROVIDERS[device] if p in available]
        if not wanted:
            raise DeviceUnavailable(
                f"no {device} execution provider in this onnxruntime (available: {', '.join(available)})")
        providers = wanted + (["CPUExecutionProvider"] if device != "cpu" else [])
        options = ort_session_options(threads, exact_int8)
        if exact_int8 and int8_dot_saturates():
            self.settings = dict([ORT_EXACT_INT8])
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:
            raise CheckFailed(f"{path}: onnxruntime cannot load it ({_first_line(exc)})") from None
        used = self.session.get_providers()
        if device != "cpu" and used[0] not in wanted:
            raise DeviceUnavailable(f"onnxruntime could not start {wanted[0]} (running on {', '.join(used)})")
        self._read_io()
        self.placement = Placement(device, used)
        self._ort = ort

    def _read_io(self) -> None:
        spec = self.session.get_inputs()[0]
        self.input_name = spec.name
        self.input_shape = [d if isinstance(d, int) else None for d in spec.shape]
        self.input_dtype = np.dtype(ORT_DTYPES.get(spec.type, np.float32))
        self.dynamic_batch = self.input_shape[0] is None
        self.output_name = self.session.get_outputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0].astype(np.float32)

    def version(self) -> str:
        return self._ort.__version__


# -- LiteRT (TFLite) --------------------------------------------------------------------------------
class TfliteBackend(Backend):
    format, runtime = "tflite", "litert"

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None):
        interpreter_module = _import("ai_edge_litert.interpreter", "tflite")
        options: dict[str, Any] = {}
        delegate_name = None
        if device != "cpu":
            delegates = _tflite_delegates(device)
            if not delegates:
                raise DeviceUnavailable(f"no LiteRT delegate for {device} is installed "
                                        f"(looked for Edge TPU / NNAPI / GPU delegate libraries)")
            # Actually hand the graph to the delegate (finding the library is not using it), and keep
            # XNNPACK out so nothing runs on the CPU without it showing.
            delegate_name = delegates[0]
            try:
                options["experimental_delegates"] = [interpreter_module.load_delegate(_delegate_library(delegate_name))]
            except Exception as exc:
                raise DeviceUnavailable(f"LiteRT delegate {delegate_name} failed to load ({_first_line(exc)})") from None
            options["experimental_op_resolver_type"] = \
                interpreter_module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self.interpreter = interpreter_module.Interpreter(model_path=str(path), num_threads=threads or os.cpu_count(),
                                                              **options)
        except Exception as exc:
            raise CheckFailed(f"{path}: LiteRT cannot load it ({_first_line(exc)})") from None
        self._module = interpreter_module
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = _edgetl_output(self.interpreter.get_output_details())
        self.input_name = self._input["name"]
        signature = list(self._input.get("shape_signature", self._input["shape"]))
        self.input_shape = [None if d < 0 else int(d) for d in signature]
        self.dynamic_batch = self.input_shape[0] is None
        self.input_dtype = np.dtype(self._input["dtype"])
        self._batch = int(self._input["shape"][0])
        self.placement = Placement(device, [f"delegate:{delegate_name}"] if delegate_name else ["CPU"])

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = self._quantize_input(batch)
        if batch.shape[0] != self._batch:
            self.interpreter.resize_tensor_input(self._input["index"], list(batch.shape))
            self.interpreter.allocate_tensors()
            self._batch = batch.shape[0]
            self._output = _edgetl_output(self.interpreter.get_output_details())
        self.interpreter.set_tensor(self._input["index"], batch)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self._output["index"])
        scale, zero = self._output["quantization"]
        if np.issubdtype(out.dtype, np.integer) and scale:
            return (out.astype(np.float32) - zero) * scale
        return out.astype(np.float32)

    def _quantize_input(self, batch: np.ndarray) -> np.ndarray:
        # int8-I/O models take quantized input; a float batch is quantized with the tensor's own params.
        if batch.dtype == self.input_dtype:
            return batch
        scale, zero = self._input["quantization"]
        if np.issubdtype(self.input_dtype, np.integer) and scale and batch.dtype != np.uint8:
            info = np.iinfo(self.input_dtype)
            return np.clip(np.round(batch / scale + zero), info.min, info.max).astype(self.input_dtype)
        return batch.astype(self.input_dtype)

    def version(self) -> str:
        import importlib.metadata

        return importlib.metadata.version("ai-edge-litert")


def _edgetl_output(outputs: list[dict]) -> dict:
    """The logits where export appended a probabilities output for TFLite clients (output 0
    ``probabilities``, output 1 ``logits``: ``export.embedded_metadata``); else the only output."""
    return next((o for o in outputs if o["name"] == "logits"), outputs[0]) if len(outputs) > 1 else outputs[0]


def _tflite_delegates(device: str) -> list[str]:
    # Delegates exist only as shared libraries installed beside the runtime; report what is there.
    import ctypes.util

    names = {"npu": ["edgetpu", "neuron_adapter"], "gpu": ["tensorflowlite_gpu_delegate"]}[device]
    return [n for n in names if ctypes.util.find_library(n)]


def _delegate_library(name: str) -> str:
    import ctypes.util

    return ctypes.util.find_library(name) or f"lib{name}.so"


# -- OpenVINO ---------------------------------------------------------------------------------------
OPENVINO_DEVICE = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}


def openvino_core():
    ov = _import("openvino", "openvino")
    return ov.Core()


class OpenVinoBackend(Backend):
    format, runtime = "openvino", "openvino"

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None,
                 precision: str | None = "f32"):
        ov = _import("openvino", "openvino")
        core = ov.Core()
        ov_device = OPENVINO_DEVICE[device]
        if ov_device not in core.available_devices and not any(
                d.startswith(ov_device + ".") for d in core.available_devices):
            raise DeviceUnavailable(f"OpenVINO has no {ov_device} device "
                                    f"(available: {', '.join(core.available_devices)})")
        config: dict[str, Any] = {}
        # OpenVINO runs FP32 models in bf16 on AVX-512/AMX CPUs unless told otherwise; parity needs f32.
        if precision and ov_device == "CPU":
            config["INFERENCE_PRECISION_HINT"] = precision
        if threads and ov_device == "CPU":
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            model = core.read_model(str(path))
            self.compiled = core.compile_model(model, ov_device, config)
        except Exception as exc:
            raise CheckFailed(f"{path}: OpenVINO cannot load it ({_first_line(exc)})") from None
        self.request = self.compiled.create_infer_request()
        port = self.compiled.input(0)
        self.input_name = port.get_any_name()
        partial = model.input(0).get_partial_shape()
        self.input_shape = [d.get_length() if d.is_static else None for d in partial]
        self.dynamic_batch = self.input_shape[0] is None
        self.input_dtype = np.dtype(port.get_element_type().to_dtype())
        self.precision = precision if ov_device == "CPU" else None
        self.settings = {"INFERENCE_PRECISION_HINT": precision} if self.precision else {}
        self.placement = Placement(device, [ov_device])
        self._ov = ov

    def run(self, batch: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: batch})
        return np.asarray(result[self.compiled.output(0)], dtype=np.float32)

    def version(self) -> str:
        return self._ov.get_version()


# -- Qualcomm QNN (Hexagon HTP) through ONNX Runtime's plugin execution provider ---------------------
# onnxruntime-qnn 2.x is a plugin EP: naming it in ``providers=[...]`` silently leaves the session on the
# CPU EP. It must be registered and attached per device (``add_provider_for_devices``). On x86 the HTP
# backend is Qualcomm's simulator, whose EP device reports itself as a CPU device.
QNN_EP = "QNNExecutionProvider"
QNN_EXTRA = "edgetl[qnn]"
_QNN_REGISTERED: list[bool] = []


def qnn_ep_devices() -> list:
    """Register the QNN plugin once per process; its EP devices (``DeviceUnavailable`` when missing)."""
    ort = _import("onnxruntime", "onnx")
    try:
        import onnxruntime_qnn
    except ImportError:
        raise DeviceUnavailable(f"npu:qnn-htp needs onnxruntime-qnn; pip install '{QNN_EXTRA}'") from None
    if not _QNN_REGISTERED:
        try:
            ort.register_execution_provider_library(QNN_EP, onnxruntime_qnn.get_library_path())
        except Exception as exc:  # registered already by someone else in this process is fine
            if "already" not in str(exc).lower():
                raise DeviceUnavailable(f"onnxruntime-qnn failed to register ({_first_line(exc)})") from None
        _QNN_REGISTERED.append(True)
    return [d for d in ort.get_ep_devices() if d.ep_name == QNN_EP]


def qnn_is_simulator(devices: list) -> bool:
    import onnxruntime as ort

    return not any(d.device.type == ort.OrtHardwareDeviceType.NPU for d in devices)


def qnn_session_options(soc: str | None = None, allow_cpu_fallback: bool = False,
                        context_file: str | Path | None = None, threads: int | None = None):
    """Session options that put the graph on the QNN HTP backend. ``allow_cpu_fallback=False`` makes
    session creation fail when any node would stay on the CPU EP; ``context_file`` makes session creation
    write the EPContext model (the compiled QNN context binary embedded in one ONNX node)."""
    import onnxruntime_qnn

    devices = qnn_ep_devices()
    if not devices:
        raise DeviceUnavailable("onnxruntime-qnn registered no QNN device")
    options = ort_session_options(threads, exact_int8=False)
    options.log_severity_level = 3  # the plugin warns about Windows-only features on every session
    if not allow_cpu_fallback:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if context_file is not None:
        options.add_session_config_entry("ep.context_enable", "1")
        options.add_session_config_entry("ep.context_embed_mode", "1")
        options.add_session_config_entry("ep.context_file_path", str(context_file))
    provider = {"backend_path": onnxruntime_qnn.get_qnn_htp_path()}
    if soc:
        provider["soc_model"] = str(soc)
    options.add_provider_for_devices(devices, provider)
    return options


class QnnBackend(OnnxBackend):
    """An ONNX artifact on the QNN HTP backend (a Snapdragon's NPU, or on x86 the HTP simulator: then
    ``simulated`` is True and wall time here is the simulator's, never the device's latency)."""

    def __init__(self, path: Path, device: str = "npu", threads: int | None = None, soc: str | None = None,
                 allow_cpu_fallback: bool = False, exact_int8: bool = True):
        ort = _import("onnxruntime", "onnx")
        devices = qnn_ep_devices()
        self.simulated = qnn_is_simulator(devices)
        options = qnn_session_options(soc, allow_cpu_fallback, threads=threads)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options)
        except Exception as exc:
            raise CheckFailed(f"{path}: the QNN HTP backend cannot take it ({_first_line(exc)})") from None
        self._read_io()
        where = "QNN HTP simulator (x86)" if self.simulated else "QNN HTP"
        self.placement = Placement(device, [where] + (["CPU"] if allow_cpu_fallback else []))
        self.settings = {"soc_model": str(soc)} if soc else {}
        self._ort = ort


BACKENDS = {"onnx": OnnxBackend, "tflite": TfliteBackend, "openvino": OpenVinoBackend}


def _pair_safe_weights(path: Path) -> bool:
    """Whether the sidecar says the INT8 weights were bounded for saturating kernels (``export
    --int8-weights pair-safe``); no sidecar, no claim."""
    try:
        metadata = json.loads(sidecar_path(path).read_text())
        return metadata["quantization"]["details"].get("int8_weights") == "pair-safe"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def open_backend(path: str | Path, device: str = "cpu", threads: int | None = None, **options) -> Backend:
    path = Path(path)
    fmt = artifact_format(path)
    if device not in ("cpu", "gpu", "npu"):
        raise UsageError(f"unknown device {device!r}; choose cpu, gpu or npu")
    if not path.exists():
        raise UsageError(f"{path}: no such artifact")
    if fmt == "openvino" and not path.with_suffix(".bin").exists():
        raise CheckFailed(f"{path}: its weights file {path.with_suffix('.bin').name} is missing")
    if fmt != "onnx":  # only ONNX Runtime has the exact/fast INT8 kernel switch; an app may pass it for all
        options.pop("exact_int8", None)
    elif options.get("exact_int8", True) and _pair_safe_weights(path):
        options["exact_int8"] = False  # the fast kernels cannot saturate on its weights: exact as they are
    simulate = options.pop("simulate", False)
    if fmt == "onnx" and device == "npu" and (simulate or _qnn_installed()):
        # The HTP simulator is never taken for the device unless asked for (bench --simulate).
        if qnn_is_simulator(qnn_ep_devices()) and not simulate:
            raise DeviceUnavailable("no Hexagon NPU on this machine (onnxruntime-qnn has only Qualcomm's x86 "
                                    "HTP simulator here; `edgetl bench --simulate` runs it)")
        return QnnBackend(path, device, threads, **options)
    options.pop("soc", None), options.pop("allow_cpu_fallback", None)
    return BACKENDS[fmt](path, device, threads, **options)


def _qnn_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime_qnn") is not None


def available_devices() -> dict[str, list[str]]:
    """What each installed runtime reports, for 'target unavailable' messages and the bench report."""
    found: dict[str, list[str]] = {}
    try:
        import onnxruntime as ort

        found["onnxruntime"] = ort.get_available_providers()
    except ImportError:
        pass
    try:
        import openvino as ov

        found["openvino"] = list(ov.Core().available_devices)
    except ImportError:
        pass
    try:
        import ai_edge_litert  # noqa: F401

        found["litert"] = ["CPU (XNNPACK)"] + [f"delegate:{d}" for dev in ("gpu", "npu")
                                                for d in _tflite_delegates(dev)]
    except ImportError:
        pass
    return found


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
