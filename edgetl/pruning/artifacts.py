"""Exported files of a pruned model, for the sweep and for checking that zeros survive conversion.

``export_float`` prefers ``edgetl.exporting`` (the project's exporter, with sidecars and parity checks);
where that is not installed it converts the logits graph directly (tf2onnx / TFLite converter), which
is enough to time the model and to measure its size.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..choices import Format

FORMATS = (Format.ONNX, Format.TFLITE)  # the formats whose weights onnx_weights/tflite_weights read
log = logging.getLogger("edgetl")


def export_float(model_dir: Path, out_dir: Path, formats=FORMATS) -> dict[str, Path]:
    """FP32 artifacts of ``model_dir`` in ``out_dir`` through ``edgetl.exporting``: {format: path}."""
    from ..errors import CheckFailed
    from ..exporting import ExportConfig, export

    try:
        result = export(ExportConfig(model=model_dir, out=out_dir, formats=tuple(formats), modes=("fp32",),
                                     verbose=False))
    except CheckFailed as exc:
        # export writes every artifact before it raises; a FP32 parity miss (its gate is 1e-4 relative)
        # does not change what the files contain, which is all size/zero counts/timing need here.
        log.warning("%s: %s", model_dir, exc)
        result = exc.result
    return {fmt: result.get(fmt, "fp32").path for fmt in formats}


def logits_model(model_dir: Path):
    from ..exporting.keras_graph import logits_submodel
    from ..training import load_trained

    model, metadata = load_trained(model_dir)
    return logits_submodel(model, (metadata.get("output") or {}).get("logits_layer"))


# -- what is inside the files -----------------------------------------------------------------------
def onnx_weights(path: Path) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    arrays = [numpy_helper.to_array(t) for t in model.graph.initializer]
    for node in model.graph.node:  # some converters keep weights as Constant nodes
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.t is not None and attr.t.dims:
                    arrays.append(numpy_helper.to_array(attr.t))
    return [a for a in arrays if a.dtype.kind == "f"]


def tflite_weights(path: Path) -> list[np.ndarray]:
    """Constant float tensors of a .tflite file, read from its flatbuffer (the buffers themselves, so
    activations, which hold no buffer, are never mistaken for weights)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(Path(path).read_bytes(), 0))
    dtypes = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.FLOAT16: np.float16}
    arrays = []
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
            if data is None or tensor.type not in dtypes or len(data) == 0:
                continue
            arrays.append(np.frombuffer(bytes(bytearray(data)), dtypes[tensor.type]))
    return arrays


def count_zero_weights(path: Path, min_size: int = 1000) -> int:
    """Exact zeros in the file's float weight tensors of at least ``min_size`` elements."""
    path = Path(path)
    arrays = onnx_weights(path) if path.suffix == ".onnx" else tflite_weights(path)
    return int(sum(np.count_nonzero(a == 0) for a in arrays if a.size >= min_size))
