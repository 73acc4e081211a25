"""Bias correction for full-integer TFLite models (``exporting.bias_correction``); the converter has none.

The float model of the same graph (converted alongside: the converter folds BN the same way) gives the
float weights and, run on the calibration images, each layer input's channel means; the int8 model's
weights are dequantized with their per-channel scales. Layers are matched in op order (CONV_2D,
DEPTHWISE_CONV_2D, FULLY_CONNECTED) and a pair is only used when shapes agree and the int8 weights are
the float ones rounded (within one step), so a graph the converter laid out differently is left alone.
The int32 bias buffers are rewritten in place in the flatbuffer (same size; nothing else changes).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .. import bias_correction, pairs
from ..calibration import CalibrationSet

LAYERS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _layers(interpreter) -> list[dict]:
    return [op for op in interpreter._get_ops_details() if op["op_name"] in LAYERS and len(op["inputs"]) >= 3
            and op["inputs"][2] >= 0]


def _as_conv_layout(op_name: str, weights: np.ndarray) -> tuple[np.ndarray, str, int]:
    """TFLite weights in ``bias_correction.output_shift``'s layout: (weights, layout, groups)."""
    if op_name == "CONV_2D":  # [O, kh, kw, C]
        return weights.transpose(0, 3, 1, 2), "conv", 1
    if op_name == "DEPTHWISE_CONV_2D":  # [1, kh, kw, O]
        return weights.transpose(3, 0, 1, 2), "conv", -1  # groups: the input channel count
    return weights, "nk", 1  # FULLY_CONNECTED [N, K]


def _float_interpreter(fp32_path: Path):
    """The float model with every inner tensor kept readable after ``invoke`` (the layers' inputs)."""
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():  # "for debugging purposes only": here it is how inner tensors are read
        warnings.simplefilter("ignore", UserWarning)
        interpreter = Interpreter(model_path=str(fp32_path), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    return interpreter


def input_means(interpreter, calib: CalibrationSet, calib_input: str) -> list[np.ndarray]:
    """Channel means (last axis) of each layer's activation input in the float model (``_float_interpreter``),
    in op order."""
    layers = _layers(interpreter)
    index = interpreter.get_input_details()[0]["index"]
    running = bias_correction.RunningMean()
    for batch in calib.batches(calib_input, chunk=1):
        interpreter.set_tensor(index, batch.astype(np.float32))
        interpreter.invoke()
        for i, op in enumerate(layers):
            running.add(str(i), interpreter.get_tensor(op["inputs"][0]), -1)
    return [running.mean(str(i)) for i in range(len(layers))]


def correct_biases(int8_path: Path, fp32_path: Path, calib: CalibrationSet, calib_input: str) -> dict[str, Any]:
    """Correct the int32 biases of the int8 model at ``int8_path`` in place."""
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.python import schema_py_generated as schema

    float_interpreter = _float_interpreter(fp32_path)  # its weights, and its layers' inputs when run
    int8_interpreter = Interpreter(model_path=str(int8_path))
    float_layers, int8_layers = _layers(float_interpreter), _layers(int8_interpreter)
    if [op["op_name"] for op in float_layers] != [op["op_name"] for op in int8_layers]:
        return {"skipped": "the float and int8 models have different layers"}
    means = input_means(float_interpreter, calib, calib_input)
    data = bytearray(int8_path.read_bytes())
    model = schema.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    details = {d["index"]: d for d in int8_interpreter.get_tensor_details()}
    buffer_users: dict[int, int] = {}
    for t in range(graph.TensorsLength()):
        buffer_users[graph.Tensors(t).Buffer()] = buffer_users.get(graph.Tensors(t).Buffer(), 0) + 1
    shifts, biases = [], []
    for float_op, op, mean in zip(float_layers, int8_layers, means):
        weight_index, bias_index = op["inputs"][1], op["inputs"][2]
        q = int8_interpreter.get_tensor(weight_index)
        bias_q = int8_interpreter.get_tensor(bias_index)
        if q.dtype != np.int8 or bias_q.dtype != np.int32:
            continue  # a layer left in float (selective quantization)
        float_weights = float_interpreter.get_tensor(float_op["inputs"][1]).astype(np.float64)
        quant = details[weight_index]["quantization_parameters"]
        scales, axis = quant["scales"].astype(np.float64), quant["quantized_dimension"]
        if float_weights.shape != q.shape or scales.size not in (1, q.shape[axis]):
            continue
        step = pairs.per_channel(scales, q.ndim, axis)
        dequantized = q.astype(np.float64) * step
        if np.max(np.abs(dequantized - float_weights) / step) > 1.01:
            continue  # not the same layer: int8 weights are the float ones rounded
        delta, layout, groups = _as_conv_layout(op["op_name"], dequantized - float_weights)
        shift = bias_correction.output_shift(delta, mean, layout, mean.size if groups == -1 else groups)
        bias_scales = details[bias_index]["quantization_parameters"]["scales"].astype(np.float64)
        bias = bias_q.astype(np.float64) * bias_scales
        if graph.Tensors(bias_index).Name().decode() != details[bias_index]["name"]:
            continue  # the interpreter's tensor index is not the flatbuffer's
        buffer_index = graph.Tensors(bias_index).Buffer()
        if buffer_users[buffer_index] != 1 or bias.size != shift.size:
            continue
        view = model.Buffers(buffer_index).DataAsNumpy()  # a writable view into ``data``
        if not isinstance(view, np.ndarray) or view.size != bias_q.nbytes:
            continue  # stored outside the flatbuffer (models over 2 GB): not these
        corrected = bias_correction.quantize_bias(bias - shift, bias_scales)
        view[:] = np.frombuffer(corrected.tobytes(), dtype=np.uint8)
        shifts.append(shift)
        biases.append(bias)
    int8_path.write_bytes(bytes(data))
    return bias_correction.summary(shifts, biases)
