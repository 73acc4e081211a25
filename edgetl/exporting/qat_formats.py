"""The quantization-aware graph (``exporting.qat``) carried into each format, so the artifact computes on
the grid the fine-tuning learned: the trained (BN-folded) weights, quantized per channel by each tool
exactly as the fake quantization did, and the learned activation ranges.

* ONNX: tf2onnx turns every ``FakeQuantWithMinMaxVars`` into a QuantizeLinear/DequantizeLinear pair;
  those pairs are read (scale, zero point -> the learned range, by ONNX tensor name) and removed, and
  the float graph is then quantized by the same ORT recipe as post-training INT8 (``backends.onnx``),
  with the learned ranges written over the calibrated ones in its calibration cache (tensors without
  a learned range, e.g. after a Reshape, keep their MinMax range). Same graph and kernels as PTQ, so
  the latency is PTQ's.
* TFLite: the converter gets the fake-quant graph itself; it takes the range of every tensor with a
  FakeQuant op from it (the representative set only fills tensors without one) and the kernels'
  per-channel fake quantization becomes their int8 scales.
* OpenVINO: ``ov.convert_model`` of the QAT QDQ ONNX (made with OpenVINO's weight choice, pair-safe by
  default), which keeps the ranges as FakeQuantize ops; NNCF is not run, it would recalibrate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..choices import InputDtype
from ..errors import UsageError


def qat_graph(job):
    """The fake-quant graph fine-tuned once per export call (``--qat-epochs``), and its sidecar block."""
    def make():
        from .qat import quantization_aware

        inputs = job.source.recipe.normalize(job.calib.pixels)
        return quantization_aware(job.keras_graph(InputDtype.FLOAT32), inputs, job.config.qat_epochs,
                                  probabilities=job.source.output_kind == "probabilities",
                                  verbose=job.config.verbose)

    return job.cached(("qat",), make)


def _check_input(input_dtype: str) -> None:
    if input_dtype != InputDtype.FLOAT32:
        raise UsageError("--qat-epochs makes float32-input artifacts only; drop --input-dtype uint8")


# -- ONNX ----------------------------------------------------------------------------------------------
def strip_activation_qdq(src: Path, dst: Path) -> dict[str, tuple[float, float]]:
    """Remove every QuantizeLinear -> DequantizeLinear pair from ``src`` (written to ``dst``); returns
    the range each pair stood for, keyed by the tensor it now leaves unquantized."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    producers = {out: node for node in graph.node for out in node.output}
    graph_outputs = {o.name for o in graph.output}
    ranges, dropped = {}, set()

    def rename_input(old: str, new: str) -> None:
        for node in graph.node:
            node.input[:] = [new if name == old else name for name in node.input]

    for dq in list(graph.node):
        quant = producers.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if quant is None or quant.op_type != "QuantizeLinear":
            continue
        scale = float(constants[quant.input[1]])
        zero_point = int(constants[quant.input[2]]) if len(quant.input) > 2 else 0
        if constants[quant.input[2]].dtype != np.uint8:
            raise ValueError(f"{quant.name}: expected uint8 fake quantization from tf2onnx")
        source, target = quant.input[0], dq.output[0]
        if target in graph_outputs and source in producers:
            producers[source].output[:] = [target if o == source else o for o in producers[source].output]
            rename_input(source, target)
            name = target
        else:
            rename_input(target, source)
            name = source
        ranges[name] = (-zero_point * scale, (255 - zero_point) * scale)
        dropped.update((id(quant), id(dq)))
    kept = [node for node in graph.node if id(node) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in graph.node for name in node.input}
    initializers = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    onnx.save(model, str(dst))
    return ranges


def carry_ranges(cache: Path, learned: dict[str, tuple[float, float]]) -> int:
    """Write the learned ranges over the calibrated ones in an ORT calibration cache; returns how many."""
    from onnxruntime.quantization.calibrate import TensorData, load_tensors_data, save_tensors_data

    data = load_tensors_data(cache)
    carried = 0
    for name, (low, high) in learned.items():
        if name in data:
            data[name] = TensorData(lowest=np.float32(low), highest=np.float32(high))
            carried += 1
    save_tensors_data(data, cache)
    return carried


def qat_qdq(job, path: Path, input_dtype: str, int8_weights: str) -> dict[str, Any]:
    """The QAT graph as an ONNX QDQ model at ``path`` (the ONNX artifact, or OpenVINO's source)."""
    from .backends import onnx as onnx_backend

    _check_input(input_dtype)
    graph, info = qat_graph(job)

    def float_graph():
        fq, plain = job.work / "onnx_qat_fake_quant.onnx", job.work / "onnx_qat_float.onnx"
        with graph.float_weights() as model:  # ORT quantizes the weights itself, on the same grid
            converted = onnx_backend.convert(model, fq, input_dtype, job.config.opset,
                                             output_name=job.source.output_kind)
        learned = strip_activation_qdq(fq, plain)
        pre, cache = job.work / "onnx_qat_pre.onnx", job.work / "onnx_qat_ranges.json"
        onnx_backend.preprocess(plain, pre)
        onnx_backend.calibrate(pre, job.calib, input_dtype, "minmax", cache)
        return pre, cache, converted, learned, carry_ranges(cache, learned)

    pre, cache, converted, learned, carried = job.cached(("onnx qat",), float_graph)
    details = onnx_backend.quantize_int8(pre, path, cache, "minmax", int8_weights=int8_weights)
    details["qat"] = {**info, "carried": {
        "activation_ranges": carried, "learned": len(learned),
        "how": "tf2onnx QDQ of the fake quantization read back into ORT's calibration cache "
               "(other tensors: MinMax on the QAT weights)"}}
    return {**converted, **details}


# -- TFLite --------------------------------------------------------------------------------------------
def qat_tflite(job, path: Path, input_dtype: str) -> dict[str, Any]:
    from .backends.tflite import CONVERTER, converter_for, full_integer, write_converted

    _check_input(input_dtype)
    graph, info = qat_graph(job)
    converter = converter_for(graph.model, job.source.output_kind)
    full_integer(converter, job.calib, "float32")
    write_converted(converter, path)
    return {"converter": f"{CONVERTER} (fake-quant graph)", "weights": "int8 per-channel",
            "activations": "int8 per-tensor", "io": {"input": "float32", "output": "float32"},
            "qat": {**info, "carried": {"activation_ranges": len(graph.quantizers),
                                        "how": "FakeQuant ops in the converted graph"}}}


# -- OpenVINO ------------------------------------------------------------------------------------------
def qat_openvino(job, path: Path, input_dtype: str, int8_weights: str) -> dict[str, Any]:
    import openvino as ov

    from .backends.openvino import save

    qdq = job.work / f"openvino_qat_{int8_weights}.onnx"
    details = qat_qdq(job, qdq, input_dtype, int8_weights)
    model = ov.convert_model(str(qdq))
    model.inputs[0].get_tensor().set_names({"image"})
    model.outputs[0].get_tensor().set_names({job.source.output_kind})
    save(model, path)
    details["qat"]["method"] = "openvino.convert_model of the QAT QDQ ONNX (onnxruntime quantize_static; no NNCF)"
    return {**details, "converter": "openvino.convert_model(QAT QDQ onnx)", "tool": "onnxruntime quantize_static",
            "int8_weights": int8_weights}
