"""Post-training fixes for NNCF's OpenVINO INT8 (``PtqFixes``), bias correction first
(``exporting.bias_correction``).

NNCF's fast bias correction runs inside ``nncf.quantize``, for the 8-bit weights it made; pair bounding
(``openvino.bound_weight_pairs``) changes those weights afterwards. So NNCF's is turned off and this one
runs on the weights that ship: ``dW = shipped - FP32`` (every Convolution, GroupConvolution and MatMul)
times the layer input's channel means on the calibration images (from the FP32 model), subtracted from
the bias ``Add`` that follows each layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import bias_correction
from ..calibration import CalibrationSet, prepare_batch

LAYERS = ("Convolution", "MatMul")


@dataclass
class PtqFixes:
    bias_correction: bool = True
    exact_target: bool = False  # the target CPU accumulates int8 without saturation (VNNI, ARM)

    @classmethod
    def for_job(cls, job) -> "PtqFixes":
        from ..pairs import SAFE_TARGETS

        # Not done here, by measurement: the classifier head MatMul in float (lite0 zero-shot: agreement
        # unchanged, cosine +0.0005, +3.8 MB for the 1000-class head) and NNCF's ChannelAlignment (CLE-like;
        # nncf 3.4 fails on this model with KeyError numpy.float32) (tools/RESULTS-accuracy.md, "A2").
        return cls(bias_correction=job.config.bias_correction, exact_target=job.target_cpu in SAFE_TARGETS)


def input_means(fp32_model, calib: CalibrationSet, calib_input: str) -> dict[str, np.ndarray]:
    """Friendly name of each Convolution/MatMul -> channel means (axis 1) of its activation input."""
    import openvino as ov

    model = fp32_model.clone()
    layers = [op for op in model.get_ordered_ops() if op.get_type_name() in (*LAYERS, "GroupConvolution")]
    outputs = model.add_outputs([op.input_value(0) for op in layers])
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ports = [compiled.outputs[len(compiled.outputs) - len(outputs) + i] for i in range(len(outputs))]
    running = bias_correction.RunningMean()
    for start in range(0, len(calib), 16):
        result = compiled(prepare_batch(calib.pixels[start:start + 16], calib.recipe, calib_input))
        for op, port in zip(layers, ports):
            running.add(op.get_friendly_name(), result[port], 1)
    return {op.get_friendly_name(): running.mean(op.get_friendly_name()) for op in layers}


def _bias_add(op):
    """The Add after ``op`` whose other input is a Constant (the bias), and that input's index."""
    for target in op.output(0).get_target_inputs():
        add = target.get_node()
        if add.get_type_name() != "Add":
            continue
        other = 1 - target.get_index()
        if add.input_value(other).get_node().get_type_name() == "Constant":
            return add, other
    return None, None


def correct_biases(ov_model, deltas: dict[str, tuple], means: dict[str, np.ndarray]) -> dict[str, Any]:
    """Subtract ``dW @ E[x]`` from each layer's bias, in place. ``deltas``: friendly name ->
    (weight change, ``pairs`` layout[, groups])."""
    from openvino import opset13

    shifts, biases = [], []
    for op in ov_model.get_ordered_ops():
        name = op.get_friendly_name()
        if op.get_type_name() not in (*LAYERS, "GroupConvolution") or name not in deltas or name not in means:
            continue
        add, index = _bias_add(op)
        if add is None:
            continue
        constant = add.input_value(index).get_node()
        bias = constant.get_data()
        delta, layout, *groups = deltas[name]
        shift = bias_correction.output_shift(delta, means[name], layout, *groups)
        if bias.size != shift.size:
            continue  # a bias of another shape than one per output channel: not a bias
        corrected = (bias.astype(np.float64) - shift.reshape(bias.shape)).astype(bias.dtype)
        add.input(index).replace_source_output(opset13.constant(corrected).output(0))
        shifts.append(shift)
        biases.append(bias)
    return bias_correction.summary(shifts, biases)


def _weights(node, shape):
    """The float value of a weight input built from Constant / Convert / Multiply / Subtract / Reshape
    (NNCF's int8 weights, or FP32 constants), or None for anything else."""
    kind = node.get_type_name()
    if kind == "Constant":
        return node.get_data().astype(np.float64)
    if kind in ("Convert", "Reshape"):
        value = _weights(node.input_value(0).get_node(), None)
    elif kind in ("Multiply", "Subtract"):
        a, b = (_weights(node.input_value(i).get_node(), None) for i in range(2))
        value = None if a is None or b is None else (a * b if kind == "Multiply" else a - b)
    else:
        return None
    return value if value is None or shape is None else value.reshape(shape)


def weight_deltas(quantized, fp32_model) -> dict[str, tuple[np.ndarray, str, int]]:
    """Friendly name -> (quantized minus float weights in ``pairs`` layout, layout, groups) for every
    Convolution, GroupConvolution and MatMul whose weights NNCF quantized."""
    from .. import pairs

    floats = {op.get_friendly_name(): op for op in fp32_model.get_ordered_ops()}
    deltas = {}
    for op in quantized.get_ordered_ops():
        kind, name = op.get_type_name(), op.get_friendly_name()
        if kind not in (*LAYERS, "GroupConvolution") or name not in floats:
            continue
        shape = list(op.get_input_shape(1))
        q = _weights(op.input_value(1).get_node(), shape)
        w = _weights(floats[name].input_value(1).get_node(), shape)
        if q is None or w is None or np.array_equal(q, w):
            continue
        delta, groups = q - w, 1
        if kind == "GroupConvolution":  # [G, O/G, C/G, kh, kw] -> [O, C/G, kh, kw]
            groups = shape[0]
            delta = delta.reshape(shape[0] * shape[1], *shape[2:])
        layout = pairs.weight_layout(kind != "MatMul", bool(op.get_attributes().get("transpose_b", False)))
        deltas[name] = (delta, layout, groups)
    return deltas
