"""Inference backends behind one small interface (numpy in, numpy out; no TensorFlow).

``open_backend(path)`` picks ONNX Runtime for ``.onnx``, LiteRT for ``.tflite`` and OpenVINO for ``.xml``
(``registry.BACKENDS``: one line per format, one module per runtime). Used by ``EdgeModel`` (the device
wrapper), by export's parity check and by the bench, so all three run artifacts the same way.
"""

from .base import DEVICES, Backend, Placement, first_line
from .onnx import ORT_DTYPES, ORT_EXACT_INT8, ORT_PROVIDERS, OnnxBackend, exact_int8_for, ort_session_options
from .openvino import OPENVINO_DEVICE, OpenVinoBackend, openvino_core
from .qnn import (QNN_EP, QNN_EXTRA, QnnBackend, qnn_ep_devices, qnn_installed, qnn_is_simulator,
                  qnn_session_options)
from .registry import (BACKENDS, FORMAT_BY_SUFFIX, PIP_EXTRA, RUNTIME_BY_FORMAT, SHARED_OPTIONS, artifact_format,
                       available_devices, backend_class, import_runtime, open_backend, target_devices)
from .tflite import DELEGATE_LIBRARIES, TfliteBackend, tflite_delegates

__all__ = ["BACKENDS", "DELEGATE_LIBRARIES", "DEVICES", "FORMAT_BY_SUFFIX", "OPENVINO_DEVICE", "ORT_DTYPES",
           "ORT_EXACT_INT8", "ORT_PROVIDERS", "PIP_EXTRA", "QNN_EP", "QNN_EXTRA", "RUNTIME_BY_FORMAT",
           "SHARED_OPTIONS", "Backend", "OnnxBackend", "OpenVinoBackend", "Placement", "QnnBackend",
           "TfliteBackend", "artifact_format", "available_devices", "backend_class", "exact_int8_for",
           "first_line", "import_runtime", "open_backend", "openvino_core", "ort_session_options",
           "qnn_ep_devices", "qnn_installed", "qnn_is_simulator", "qnn_session_options", "target_devices",
           "tflite_delegates"]
