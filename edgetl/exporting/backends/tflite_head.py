"""A full-integer TFLite model's classifier head made hybrid: int8 weights, float activations.

The int8 FULLY_CONNECTED at the end of a full-integer model rounds its output, the logits, to 1/256 of
their calibrated range (lite0's 1000-class head: a step of 0.079 logits); where the backbone has left two
classes closer than a step they come out tied or swapped. Keeping the whole head float costs its weights
at 4 bytes each (lite0: 5.3 -> 9.1 MB). Here the head keeps its int8 weights and per-channel scales and
becomes LiteRT's hybrid FULLY_CONNECTED (what dynamic-range conversion writes: float input quantized per
call, int8 x int8 products, float bias and output): a DEQUANTIZE feeds it the backbone's int8 features as
float, its bias becomes the float value of the (already corrected) int32 bias, and it writes the float
tensor the model's output DEQUANTIZE wrote, which goes. The file grows by one tensor and one op.

Only a FULLY_CONNECTED with int8 input, weights and output whose output is read by nothing but one
DEQUANTIZE (the logits' head; not one followed by an int8 SOFTMAX) is changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# The operator version TF 2.21's dynamic-range conversion gives a per-channel hybrid FULLY_CONNECTED
# with asymmetrically quantized inputs.
HYBRID_FC_VERSION = 12


def hybrid_head(path: Path) -> dict[str, Any]:
    """Make every int8 FULLY_CONNECTED whose output is only dequantized hybrid, in place; what changed."""
    from ai_edge_litert.tools import flatbuffer_utils

    schema = flatbuffer_utils.schema_fb
    ops = schema.BuiltinOperator
    types = schema.TensorType
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))

    def opcode(op) -> int:
        return flatbuffer_utils.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])

    graph = model.subgraphs[0]
    readers: dict[int, list] = {}
    buffer_users: dict[int, int] = {}
    for op in graph.operators:
        for index in op.inputs:
            readers.setdefault(int(index), []).append(op)
    for tensor in graph.tensors:
        buffer_users[tensor.buffer] = buffer_users.get(tensor.buffer, 0) + 1
    outputs = {int(i) for i in graph.outputs}
    changed = []
    for op in list(graph.operators):
        if opcode(op) != ops.FULLY_CONNECTED or len(op.inputs) < 2:
            continue
        source, weights, out = int(op.inputs[0]), int(op.inputs[1]), int(op.outputs[0])
        bias = int(op.inputs[2]) if len(op.inputs) > 2 else -1
        after = readers.get(out, [])
        if ([graph.tensors[i].type for i in (source, weights, out)] != [types.INT8] * 3 or out in outputs
                or len(after) != 1 or opcode(after[0]) != ops.DEQUANTIZE):
            continue
        if bias >= 0 and (graph.tensors[bias].type != types.INT32 or buffer_users[graph.tensors[bias].buffer] != 1):
            continue
        if op.builtinOptions is None:
            op.builtinOptionsType = schema.BuiltinOptions.FullyConnectedOptions
            op.builtinOptions = schema.FullyConnectedOptionsT()
        dequantize = after[0]
        if bias >= 0:  # int32 at input scale x weight scale -> its float value
            tensor = graph.tensors[bias]
            buffer = model.buffers[tensor.buffer]
            values = np.frombuffer(bytes(bytearray(buffer.data)), dtype="<i4").astype(np.float64)
            buffer.data = (values * np.asarray(tensor.quantization.scale, np.float64)).astype("<f4").view(np.uint8)
            tensor.type, tensor.quantization = types.FLOAT32, None
        features = _float_copy(graph.tensors[source], schema)
        graph.tensors.append(features)
        feed = schema.OperatorT()
        feed.opcodeIndex, feed.inputs, feed.outputs = dequantize.opcodeIndex, [source], [len(graph.tensors) - 1]
        op.inputs[0], op.outputs[0] = len(graph.tensors) - 1, int(dequantize.outputs[0])
        # As dynamic-range conversion does (lite0 zero-shot: symmetric measured the same, cosine 0.9976)
        op.builtinOptions.asymmetricQuantizeInputs = True
        graph.operators.remove(dequantize)
        graph.operators.insert(graph.operators.index(op), feed)
        code = model.operatorCodes[op.opcodeIndex]
        code.version = max(code.version, HYBRID_FC_VERSION)
        weight_scales = np.asarray(graph.tensors[weights].quantization.scale)
        changed.append({"weights": list(map(int, graph.tensors[weights].shape)),
                        "weight_scales": "per-channel" if weight_scales.size > 1 else "per-tensor"})
    if changed:
        path.write_bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    return {"ops": ["FULLY_CONNECTED"] * len(changed), "layers": changed}


def _float_copy(tensor, schema):
    copy = schema.TensorT()
    copy.shape, copy.shapeSignature = tensor.shape, tensor.shapeSignature
    copy.type, copy.buffer = schema.TensorType.FLOAT32, 0  # buffer 0: the empty one (not a constant)
    copy.name = (tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name) + "/dequantized"
    return copy
