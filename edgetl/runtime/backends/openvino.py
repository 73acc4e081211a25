"""OpenVINO: ``.xml`` + ``.bin`` IRs on its CPU, GPU or NPU plugin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...artifact_layout import EMBEDDED_KEY
from ...errors import CheckFailed, DeviceUnavailable
from .base import Backend, Placement, first_line

OPENVINO_DEVICE = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU"}


def openvino_core():
    ov = OpenVinoBackend.require("openvino")
    return ov.Core()


class OpenVinoBackend(Backend):
    format, runtime, pip_extra = "openvino", "openvino", "edgetl[runtime-openvino]"
    options = frozenset({"precision"})
    # reentrant: no, one InferRequest holds per-call state
    device_names = OPENVINO_DEVICE

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None,
                 precision: str | None = "f32"):
        super().__init__(path, device, threads)
        ov = self.require("openvino")
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
            raise CheckFailed(f"{path}: OpenVINO cannot load it ({first_line(exc)})") from None
        self.request = self.compiled.create_infer_request()
        port = self.compiled.input(0)
        self.input_name = port.get_any_name()
        partial = model.input(0).get_partial_shape()
        self.input_shape = [d.get_length() if d.is_static else None for d in partial]
        self.dynamic_batch = self.input_shape[0] is None
        self.input_dtype = np.dtype(port.get_element_type().to_dtype())
        self.precision = precision if ov_device == "CPU" else None
        if self.precision:
            self.settings = {"INFERENCE_PRECISION_HINT": precision}
        self.placement = Placement(device, [ov_device])
        self._ov = ov

    def run(self, batch: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: batch})
        return np.asarray(result[self.compiled.output(0)], dtype=np.float32)

    def version(self) -> str:
        return self._ov.get_version()

    @property
    def reported_precision(self) -> str | None:
        """The precision hint given to the CPU plugin, or "native" (the plugin's own, bf16 on some CPUs)."""
        return self.precision or "native"

    def execution_devices(self) -> list[str] | None:
        """The devices the compiled model runs on, as the plugin says (None: it does not say)."""
        try:
            return list(self.compiled.get_property("EXECUTION_DEVICES"))
        except Exception:  # older plugins lack the property
            return None

    def _placement_details(self, sample: np.ndarray, devices: list[str]) -> dict[str, Any]:
        executing = self.execution_devices()
        devices = devices if executing is None else executing  # else the requested device stands
        counts: dict[str, int] = {}
        device = devices[0] if len(devices) == 1 else None
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            kind = str(rt["layerType"]) if "layerType" in rt else op.get_type_name()
            if kind in ("Parameter", "Result", "Input", "Output", "Constant"):
                continue
            where = str(rt["affinity"]) if "affinity" in rt else device or "unknown"
            counts[where] = counts.get(where, 0) + 1
        return {"devices": devices, "nodes": counts, "method": "openvino runtime model",
                "verified": "unknown" not in counts}

    @classmethod
    def reported_devices(cls) -> list[str] | None:
        try:
            import openvino as ov
        except ImportError:
            return None
        return list(ov.Core().available_devices)

    @classmethod
    def devices_for(cls, target: str, available: dict[str, list[str]] | None = None) -> list[str]:
        name = cls.device_names[target]
        return [d for d in cls._reported(available) if d == name or d.startswith(name + ".")]

    @classmethod
    def embedded_text(cls, path: Path) -> str | None:
        """``rt_info`` ``edgetl/metadata``: the IR is plain XML, no need to read the model and its weights."""
        import xml.etree.ElementTree as ElementTree

        rt_info = ElementTree.parse(path).getroot().find("rt_info")
        node = rt_info.find(f"{EMBEDDED_KEY}/metadata") if rt_info is not None else None
        return node.get("value") if node is not None else None
