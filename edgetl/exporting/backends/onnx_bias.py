"""Bias correction for ONNX Runtime QDQ models (``exporting.bias_correction``): ORT's quantizer has none.

The FP32 graph (the pre-processed one the QDQ model was made from: same node names, BN already folded)
gives each Conv/Gemm input's channel means on the calibration images; the QDQ model gives the weights as
they run (dequantized int8, pair-bounded or not). Each layer's bias then absorbs ``-dW @ E[x]``: int32
biases are re-quantized at their own scale, float biases (a Gemm left in float) change in place.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import bias_correction, pairs
from ..calibration import CalibrationSet

LAYERS = ("Conv", "Gemm", "MatMul")


def input_means(pre_path: Path, node_names: set[str], calib: CalibrationSet, input_dtype: str) -> dict[str, np.ndarray]:
    """Channel means (axis 1) of the activation input of the named FP32 nodes over the calibration set."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(pre_path))
    wanted = {node.name: node.input[0] for node in model.graph.node if node.name in node_names}
    present = {output.name for output in model.graph.output}
    for tensor in dict.fromkeys(wanted.values()):
        if tensor not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory(prefix="edgetl-bias-") as tmp:
        path = Path(tmp) / "means.onnx"
        onnx.save(model, str(path))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    tensors = list(dict.fromkeys(wanted.values()))
    input_name = session.get_inputs()[0].name
    running = bias_correction.RunningMean()
    for batch in calib.batches(input_dtype):
        for name, value in zip(tensors, session.run(tensors, {input_name: batch})):
            running.add(name, value, 1)
    return {node: running.mean(tensor) for node, tensor in wanted.items()}


def correct_biases(qdq_path: Path, pre_path: Path, calib: CalibrationSet, input_dtype: str) -> dict[str, Any]:
    """Correct every quantized Conv/Gemm/MatMul bias of the QDQ model at ``qdq_path`` in place."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(qdq_path))
    fp32 = onnx.load(str(pre_path))
    float_init = {init.name: init for init in fp32.graph.initializer}
    float_weights = {node.name: numpy_helper.to_array(float_init[node.input[1]])
                     for node in fp32.graph.node
                     if node.op_type in LAYERS and len(node.input) > 1 and node.input[1] in float_init}
    initializers = {init.name: init for init in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}

    def array(name):
        return numpy_helper.to_array(initializers[name]) if name in initializers else None

    candidates = []
    for node in model.graph.node:
        if node.op_type not in LAYERS or len(node.input) < 3 or node.name not in float_weights:
            continue
        w_dq = producers.get(node.input[1])
        if w_dq is None or w_dq.op_type != "DequantizeLinear" or array(w_dq.input[0]) is None:
            continue  # weights left in float: nothing to correct
        candidates.append((node, w_dq))
    means = input_means(pre_path, {node.name for node, _ in candidates}, calib, input_dtype)
    shifts, biases = [], []
    for node, w_dq in candidates:
        zero = array(w_dq.input[2]) if len(w_dq.input) > 2 else None
        axis = next((a.i for a in w_dq.attribute if a.name == "axis"), 1)
        dequantized = pairs.dequantize(array(w_dq.input[0]), array(w_dq.input[1]), axis, zero)
        delta = dequantized - float_weights[node.name]
        transposed = any(a.name == "transB" and a.i for a in node.attribute)
        layout = pairs.weight_layout(node.op_type == "Conv", transposed)
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        shift = bias_correction.output_shift(delta, means[node.name], layout, groups)
        bias_dq = producers.get(node.input[2])
        if bias_dq is not None and bias_dq.op_type == "DequantizeLinear" and array(bias_dq.input[0]) is not None:
            bias_q, bias_scale = array(bias_dq.input[0]), array(bias_dq.input[1]).astype(np.float64)
            bias = bias_q.astype(np.float64) * bias_scale
            corrected = bias_correction.quantize_bias(bias - shift, bias_scale).astype(bias_q.dtype)
            initializers[bias_dq.input[0]].CopyFrom(numpy_helper.from_array(corrected, bias_dq.input[0]))
        elif node.input[2] in initializers:
            bias = array(node.input[2]).astype(np.float64)
            corrected = (bias - shift).astype(array(node.input[2]).dtype)
            initializers[node.input[2]].CopyFrom(numpy_helper.from_array(corrected, node.input[2]))
        else:
            continue
        shifts.append(shift)
        biases.append(bias)
    onnx.save(model, str(qdq_path))
    return bias_correction.summary(shifts, biases)
