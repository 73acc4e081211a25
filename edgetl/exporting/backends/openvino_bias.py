"""Bias correction for pair-bounded OpenVINO weights (``exporting.bias_correction``).

NNCF's fast bias correction runs inside ``nncf.quantize``, for the 8-bit weights it made; pair bounding
(``openvino.bound_weight_pairs``) changes those weights afterwards. This removes what the bounding adds:
``dW = bounded - 8-bit`` times the layer input's channel means on the calibration images (from the FP32
model), subtracted from the bias ``Add`` that follows each Convolution/MatMul.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import bias_correction
from ..calibration import CalibrationSet, prepare_batch

LAYERS = ("Convolution", "MatMul")


def input_means(fp32_model, calib: CalibrationSet, calib_input: str) -> dict[str, np.ndarray]:
    """Friendly name of each Convolution/MatMul -> channel means (axis 1) of its activation input."""
    import openvino as ov

    model = fp32_model.clone()
    layers = [op for op in model.get_ordered_ops() if op.get_type_name() in LAYERS]
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


def correct_biases(ov_model, deltas: dict[str, tuple[np.ndarray, str]], means: dict[str, np.ndarray]) -> dict[str, Any]:
    """Subtract ``dW @ E[x]`` from each layer's bias, in place. ``deltas``: friendly name ->
    (weight change, ``pairs`` layout)."""
    from openvino import opset13

    shifts, biases = [], []
    for op in ov_model.get_ordered_ops():
        name = op.get_friendly_name()
        if op.get_type_name() not in LAYERS or name not in deltas or name not in means:
            continue
        add, index = _bias_add(op)
        if add is None:
            continue
        constant = add.input_value(index).get_node()
        bias = constant.get_data()
        delta, layout = deltas[name]
        shift = bias_correction.output_shift(delta, means[name], layout)
        if bias.size != shift.size:
            continue  # a bias of another shape than one per output channel: not a bias
        corrected = (bias.astype(np.float64) - shift.reshape(bias.shape)).astype(bias.dtype)
        add.input(index).replace_source_output(opset13.constant(corrected).output(0))
        shifts.append(shift)
        biases.append(bias)
    return bias_correction.summary(shifts, biases)
