"""LiteRT (ai-edge-litert, the TFLite interpreter): ``.tflite`` artifacts on XNNPACK/builtin CPU kernels
or on a delegate library installed beside the runtime (Edge TPU / NNAPI / GPU)."""

from __future__ import annotations

import ctypes.util
import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ...artifact_layout import TFLITE_FILE
from ...errors import CheckFailed, DeviceUnavailable
from .base import Backend, Placement, first_line

DELEGATE_LIBRARIES = {"npu": ["edgetpu", "neuron_adapter"], "gpu": ["tensorflowlite_gpu_delegate"]}


def tflite_delegates(device: str) -> list[str]:
    """The LiteRT delegates for ``device`` (gpu | npu) installed here: they exist only as shared
    libraries installed beside the runtime, so report what is there."""
    return [n for n in DELEGATE_LIBRARIES[device] if ctypes.util.find_library(n)]


def _delegate_library(name: str) -> str:
    return ctypes.util.find_library(name) or f"lib{name}.so"


class TfliteBackend(Backend):
    format, runtime, pip_extra = "tflite", "litert", "edgetl[runtime-tflite]"
    # reentrant: no, an interpreter holds per-call state (input tensors, resized shapes)

    def __init__(self, path: Path, device: str = "cpu", threads: int | None = None):
        super().__init__(path, device, threads)
        interpreter_module = self.require("ai_edge_litert.interpreter")
        options: dict[str, Any] = {}
        delegate_name = None
        if device != "cpu":
            delegates = tflite_delegates(device)
            if not delegates:
                raise DeviceUnavailable(f"no LiteRT delegate for {device} is installed "
                                        f"(looked for Edge TPU / NNAPI / GPU delegate libraries)")
            # Actually hand the graph to the delegate (finding the library is not using it), and keep
            # XNNPACK out so nothing runs on the CPU without it showing.
            delegate_name = delegates[0]
            try:
                options["experimental_delegates"] = [interpreter_module.load_delegate(_delegate_library(delegate_name))]
            except Exception as exc:
                raise DeviceUnavailable(f"LiteRT delegate {delegate_name} failed to load ({first_line(exc)})") from None
            options["experimental_op_resolver_type"] = \
                interpreter_module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self.interpreter = interpreter_module.Interpreter(model_path=str(path), num_threads=threads or os.cpu_count(),
                                                              **options)
        except Exception as exc:
            raise CheckFailed(f"{path}: LiteRT cannot load it ({first_line(exc)})") from None
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

    def op_count(self) -> int:
        """The model's ops as LiteRT lists them (its Python API has no public call for this)."""
        return len(self.interpreter._get_ops_details())

    def _placement_details(self, sample: np.ndarray, devices: list[str]) -> dict[str, Any]:
        # LiteRT's Python API lists the model's ops, not which delegate took them: on cpu they all run
        # on the CPU (XNNPACK or builtin kernels); on gpu/npu the split cannot be proven from here.
        ops = self.op_count()
        if self.placement.requested == "cpu":
            return {"nodes": {"CPU": ops}, "method": "litert ops (XNNPACK/builtin kernels on CPU)"}
        return {"nodes": {}, "method": "unverifiable: LiteRT does not report per-node delegation",
                "total_nodes": ops, "verified": False}

    @classmethod
    def reported_devices(cls) -> list[str] | None:
        try:
            importlib.import_module("ai_edge_litert")
        except ImportError:
            return None
        return ["CPU (XNNPACK)"] + [f"delegate:{d}" for dev in ("gpu", "npu") for d in tflite_delegates(dev)]

    @classmethod
    def devices_for(cls, target: str, available: dict[str, list[str]] | None = None) -> list[str]:
        if target == "cpu":
            return [d for d in cls._reported(available) if not d.startswith("delegate:")]
        installed = cls.reported_devices() is not None if available is None else cls.runtime in available
        return [f"delegate:{d}" for d in tflite_delegates(target)] if installed else []

    @classmethod
    def embedded_text(cls, path: Path) -> str | None:
        """``edgetl.json`` among the associated files: a .tflite with associated files is a flatbuffer
        followed by a zip archive, which zipfile finds from its end-of-central-directory record."""
        import zipfile

        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as archive:
            return archive.read(TFLITE_FILE).decode() if TFLITE_FILE in archive.namelist() else None


def _edgetl_output(outputs: list[dict]) -> dict:
    """The logits where export appended a probabilities output for TFLite clients (output 0
    ``probabilities``, output 1 ``logits``: ``export.embedded_metadata``); else the only output."""
    return next((o for o in outputs if o["name"] == "logits"), outputs[0]) if len(outputs) > 1 else outputs[0]
