"""One export backend per format (``base.ExportBackend``), and the registry that picks it."""

from ...choices import Format, choose
from .base import ExportBackend
from .onnx import OnnxBackend
from .openvino import OpenvinoBackend
from .tflite import TfliteBackend

BACKENDS: dict[Format, ExportBackend] = {Format.ONNX: OnnxBackend(), Format.TFLITE: TfliteBackend(),
                                         Format.OPENVINO: OpenvinoBackend()}


def get_backend(fmt: str) -> ExportBackend:
    return BACKENDS[choose(Format, fmt, "format")]


__all__ = ["BACKENDS", "ExportBackend", "OnnxBackend", "OpenvinoBackend", "TfliteBackend", "get_backend"]
