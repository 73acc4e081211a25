"""ONNX Runtime: ``.onnx`` artifacts on its CPU, CUDA/TensorRT or NPU execution providers, and the one
decision on ONNX Runtime's exact or fast INT8 kernels (``exact_int8_for``)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ...artifact_layout import EMBEDDED_KEY
from ...errors import CheckFailed, DeviceUnavailable
from ...metadata import read_json, sidecar_path
from .. import cpu
from .base import Backend, Placement, first_line

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


def exact_int8_for(artifact: str | Path | None = None, requested: bool = True,
                   int8_weights: str | None = None) -> bool:
    """Whether ONNX Runtime must run this artifact's INT8 GEMMs on its exact U8U8 kernels
    (``session.x64quantprecision=1``); the one place edgetl decides it (runtime, parity, bench, profile).

    True when exactness is ``requested`` (``exact_int8``; False: the app accepts the fast, saturating
    kernels), this CPU's kernels can saturate (``runtime.cpu.int8_dot_saturates``: x86 without VNNI),
    and the weights are not pair-safe: ``int8_weights`` when given (export, before the sidecar exists),
    else what the artifact's sidecar records (no sidecar, no claim). On pair-safe weights the fast
    kernels cannot saturate, so they are exact as they are (measured: tools/RESULTS-runtime.md)."""
    if not requested or not cpu.int8_dot_saturates():
        return False
    if int8_weights is None and artifact is not None:
        int8_weights = _sidecar_int8_weights(Path(artifact))
    return int8_weights != "pair-safe"


def _sidecar_int8_weights(path: Path) -> str | None:
    """The sidecar's ``quantization.details.int8_weights`` (``export --int8-weights``), if any."""
    try:
        metadata = json.loads(sidecar_path(path).read_text())
        return metadata["quantization"]["details"].get("int8_weights")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def ort_session_options(threads: int | None = None, exact_int8: bool = True, artifact: str | Path | None = None):
    """Full graph optimisation and (when asked) a fixed intra-op pool; one place for both the runtime
    and the bench so they measure the same thing. ``exact_int8`` asks for the exact INT8 kernels,
    which are switched on where ``exact_int8_for(artifact, exact_int8)`` says (a no-op elsewhere)."""
    ort = OnnxBackend.require("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if exact_int8_for(artifact, exact_int8):
        options.add_session_config_entry(*ORT_EXACT_INT8)
    return options


class OnnxBackend(Backend):
    format, runtime, pip_extra = "onnx", "onnxruntime", "edgetl[runtime-onnx]"
    options = frozenset({"exact_int8"})
    providers = ORT_PROVIDERS
    reentrant = True  # InferenceSession.run is documented thread-safe

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None, exact_int8: bool = True):
        super().__init__(path, device, threads)
        ort = self.require("onnxruntime")
        available = ort.get_available_providers()
        wanted = [p for p in ORT_PROVIDERS[device] if p in available]
        if not wanted:
            raise DeviceUnavailable(
                f"no {device} execution provider in this onnxruntime (available: {', '.join(available)})")
        providers = wanted + (["CPUExecutionProvider"] if device != "cpu" else [])
        self.exact_int8 = exact_int8_for(path, exact_int8)
        options = ort_session_options(threads, self.exact_int8)
        if self.exact_int8:
            self.settings = dict([ORT_EXACT_INT8])
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:
            raise CheckFailed(f"{path}: onnxruntime cannot load it ({first_line(exc)})") from None
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

    def _session_options(self):
        return ort_session_options(self.threads, self.exact_int8)

    def _providers(self) -> dict[str, Any]:
        return {"providers": self.session.get_providers()}

    def _placement_details(self, sample: np.ndarray, devices: list[str]) -> dict[str, Any]:
        return {"nodes": self.profile_nodes(sample), "method": "onnxruntime profiling"}

    def profile_nodes(self, sample: np.ndarray) -> dict[str, int]:
        """A second session with profiling on, the same providers and INT8 kernels: one run of
        ``sample``, nodes counted per execution provider (``{"CPU": 60, "CUDA": 3}``)."""
        options = self._session_options()
        options.enable_profiling = True
        with tempfile.TemporaryDirectory(prefix="edgetl-ort-profile-") as tmp:
            options.profile_file_prefix = str(Path(tmp) / "profile")
            session = self._ort.InferenceSession(str(self.path), sess_options=options, **self._providers())
            session.run(None, {self.input_name: sample})
            events = read_json(session.end_profiling())
        counts: dict[str, set] = {}
        for event in events:
            args = event.get("args", {})
            if event.get("cat") == "Node" and "provider" in args:
                counts.setdefault(args["provider"], set()).add(args.get("node_index", event.get("name")))
        return {provider.replace("ExecutionProvider", ""): len(nodes) for provider, nodes in counts.items()}

    @classmethod
    def reported_devices(cls) -> list[str] | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        return ort.get_available_providers()

    @classmethod
    def devices_for(cls, target: str, available: dict[str, list[str]] | None = None) -> list[str]:
        reported = cls._reported(available)
        return [p for p in cls.providers[target] if p in reported]

    @classmethod
    def embedded_text(cls, path: Path) -> str | None:
        """``metadata_props`` key ``edgetl``."""
        try:
            import onnx
        except ImportError:  # device installs have onnxruntime only
            import onnxruntime

            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            return session.get_modelmeta().custom_metadata_map.get(EMBEDDED_KEY)
        model = onnx.load(str(path), load_external_data=False)
        return next((p.value for p in model.metadata_props if p.key == EMBEDDED_KEY), None)

    @classmethod
    def for_device(cls, device: str, simulate: bool = False) -> type[Backend]:
        """On npu with onnxruntime-qnn installed (or ``simulate``): the QNN HTP backend."""
        from .qnn import QnnBackend, qnn_installed

        return QnnBackend.checked(simulate) if device == "npu" and (simulate or qnn_installed()) else cls
