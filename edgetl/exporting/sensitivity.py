"""Accuracy-aware INT8: when an INT8 artifact misses ``--min-agreement``, keep the fewest, most
quantization-sensitive layers in float until it holds.

ONNX (the precise path): both the pre-processed FP32 graph and its QDQ model expose every intermediate
tensor under the same name (QDQ only inserts Q/DQ pairs after them), so each Conv/Gemm's *own*
contribution is measured as ``relerr(output) - relerr(input)`` against the FP32 activations on the
check images. Layers are excluded in that order (``nodes_to_exclude``: their Q/DQ pairs are left out),
doubling the count (1, 2, 4, ...) until the threshold holds; ranges come from the cached calibration,
so each retry is a re-quantization, not a re-calibration.

OpenVINO: NNCF's own accuracy control (``nncf.quantize_with_accuracy_control``, metric = top-1 agreement
with the Keras model on the check images) reverts the fewest layers to float. TFLite: its
QuantizationDebugger ranks every quantized op by RMSE / scale of its own output (float references run
beside each op) and then builds selectively quantized models with the worst ops denylisted, in the same
1, 2, 4, ... search as ONNX; uint8-input artifacts, which the debugger cannot make, fall back to
dynamic-range quantization (INT8 weights, float activations). ``float_layers`` records what stayed float
(OpenVINO: convolutions whose weights are not quantized; TFLite: op output tensors), and the sidecar's
``accuracy_aware`` block the latency cost measured at export.

Measured (efficientnet_lite0 zero-shot, 121 photos, AVX2 box without VNNI). ONNX, with the 7-bit weights
export used before the runtime's exact kernels (see export/onnx.py): full INT8 agreement 0.934; the
threshold 0.98 held with 32 of 64 layers in float (0.992), at 2x the full-INT8 latency. The ranking is
a cheap heuristic (one pass, relative errors are not additive): agreement did not rise monotonically
with the layer count (1: 0.942, 4: 0.959, 16: 0.909, 32: 0.992). OpenVINO (7-bit weights, overflow
fix): 0.967 -> 1.000 at a 0.99 threshold with 26 of 50 convolutions reverted, in 438 s (NNCF ranks by
re-validating the model once per quantized layer).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from ..errors import CheckFailed
from ..timing import time_runs

log = logging.getLogger("edgetl")

RANK_IMAGES = 32
LATENCY_RUNS = 20


def _with_outputs(model, names: list[str]):
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return model


def _activations(model, names: list[str], inputs: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(_with_outputs(model, names).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    values = session.run(names, {input_name: inputs})
    return dict(zip(names, values))


def rank_onnx_nodes(pre_path: Path, int8_path: Path, inputs: np.ndarray) -> list[tuple[str, float]]:
    """(node name, own relative error) for Conv/Gemm/MatMul nodes, most sensitive first.

    Errors are taken where the QDQ graph's consumers read a tensor: ``T_DequantizeLinear_Output`` (the
    value after quantize/dequantize, clipping included). QDQ drops a Conv's trailing Relu/Clip and
    writes the Conv straight to the activation's tensor name, so a Conv is measured at its activation.
    """
    import onnx

    fp32 = onnx.load(str(pre_path))
    quant = onnx.load(str(int8_path))
    quant_tensors = {o for n in quant.graph.node for o in n.output} | {i.name for i in quant.graph.input}
    consumers: dict[str, list] = {}
    for node in fp32.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def measured(tensor: str) -> str | None:
        """The fp32 tensor whose quantized counterpart exists (following a fused activation)."""
        if tensor not in quant_tensors:
            following = consumers.get(tensor, [])
            if len(following) == 1 and following[0].op_type in ("Relu", "Clip"):
                tensor = following[0].output[0]
        return tensor if tensor in quant_tensors else None

    def quantized_name(tensor: str) -> str:
        dq = f"{tensor}_DequantizeLinear_Output"
        return dq if dq in quant_tensors else tensor

    nodes = [n for n in fp32.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    pairs = {n.name: (measured(n.input[0]), measured(n.output[0])) for n in nodes}
    wanted = sorted({t for pair in pairs.values() for t in pair if t})
    graph_inputs = {i.name for i in fp32.graph.input}
    ref = _activations(fp32, [t for t in wanted if t not in graph_inputs], inputs)
    got = _activations(quant, [quantized_name(t) for t in wanted if t not in graph_inputs], inputs)
    error = {t: float(np.linalg.norm(got[quantized_name(t)] - ref[t]) / max(np.linalg.norm(ref[t]), 1e-12))
             for t in wanted if t not in graph_inputs}
    ranked = [(name, error.get(out, 0.0) - error.get(inp, 0.0) if out else 0.0)
              for name, (inp, out) in pairs.items()]
    return sorted(ranked, key=lambda item: item[1], reverse=True)


def latency_ms(path: Path, sample: np.ndarray, runs: int = LATENCY_RUNS, **backend_options) -> float:
    from ..runtime.backends import open_backend

    backend = open_backend(path, "cpu", **backend_options)
    one = sample[:1].astype(backend.input_dtype, copy=False)
    return round(float(np.median(time_runs(lambda: backend.run(one), runs, warmup=1))), 3)


def make_accurate(builder, fmt: str, input_dtype: str, path: Path, details: dict, parity: dict):
    """Returns (path, details, parity, runtime, float_layers) of the artifact that meets the threshold
    (or of the best attempt, still marked failing, when even all candidates in float do not)."""
    inputs = (builder.checks.pixels if input_dtype == "uint8"
              else builder.source.recipe.normalize(builder.checks.pixels))
    options = builder.backend_options(path, "int8")
    full_int8_ms = latency_ms(path, inputs, **options)
    full_int8_agreement = parity["top1_agreement"]
    if fmt == "onnx":
        result = _onnx(builder, input_dtype, path, details, inputs)
    elif fmt == "openvino":
        result = _openvino(builder, input_dtype, path, inputs)
    elif input_dtype == "float32":
        result = _tflite(builder, input_dtype, path, details)
    else:  # the debugger that keeps TFLite layers float does not make uint8-input models
        result = _tflite_dynamic_fallback(builder, input_dtype, path)
    path, details, parity, runtime, float_layers = result
    details = dict(details)
    details["accuracy_aware"] = {"full_int8_latency_ms": full_int8_ms,
                                 "latency_ms": latency_ms(path, inputs, **options),
                                 "full_int8_agreement": full_int8_agreement, "float_layers": len(float_layers),
                                 "runs": LATENCY_RUNS, "batch": 1}
    return path, details, parity, runtime, float_layers


def _float_until_passing(builder, input_dtype: str, path: Path, details: dict, ranked: list[tuple[str, float]],
                         measure: str, quantize_keeping_float) -> tuple:
    """Re-quantize with the 1, 2, 4, ... worst-ranked layers in float until parity passes (or all are);
    ``quantize_keeping_float(candidate_path, names) -> details``. Keeps the best attempt in ``path``;
    ``measure`` names what the ranking scores are."""
    candidate = path.with_name(f"{path.stem}.trial{path.suffix}")
    best = None
    count = 1
    while True:
        kept = [name for name, _ in ranked[:count]]
        try:
            trial_details = quantize_keeping_float(candidate, kept)
        except Exception as exc:  # e.g. TFLite's debugger refuses a graph with (almost) nothing quantized
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            if best is None:
                raise CheckFailed(f"{path.name}: accuracy-aware re-quantization failed ({reason})") from None
            log.warning("accuracy-aware: stopped at %d layer(s) in float: %s", count, reason)
            break
        trial_parity, runtime = builder.check(candidate, "int8", input_dtype)
        log.info("accuracy-aware: %d layer(s) in float -> agreement %.3f", count, trial_parity["top1_agreement"])
        if best is None or trial_parity["top1_agreement"] > best[1]["top1_agreement"]:
            shutil.move(candidate, path)
            best = ({**details, **trial_details}, trial_parity, runtime, kept)
        if trial_parity["passed"] or count >= len(ranked):
            break
        count = min(count * 2, len(ranked))
    candidate.unlink(missing_ok=True)
    details, parity, runtime, kept = best
    details["sensitivity"] = {"measure": measure, "ranked": [{"node": n, "own_error": round(e, 6)}
                                                              for n, e in ranked[:max(8, len(kept))]]}
    return path, details, parity, runtime, kept


def _onnx(builder, input_dtype: str, path: Path, details: dict, inputs: np.ndarray):
    from . import onnx as onnx_export

    pre, cache = builder.onnx_ranges(input_dtype)
    ranked = rank_onnx_nodes(pre, path, inputs[:RANK_IMAGES])
    return _float_until_passing(
        builder, input_dtype, path, details, ranked, "relative L2 error of the output minus that of the input",
        lambda candidate, excluded: onnx_export.quantize_int8(pre, candidate, cache, builder.config.calib_method,
                                                              excluded, int8_weights=builder.int8_weights("onnx")))


def _tflite(builder, input_dtype: str, path: Path, details: dict):
    from . import tflite as tflite_export

    ranked = tflite_export.rank_layers(builder.keras_graph(input_dtype), builder.calib, "float32", RANK_IMAGES,
                                       output_name=builder.source.output_kind)
    return _float_until_passing(
        builder, input_dtype, path, details, ranked, "RMSE / scale of the op output (QuantizationDebugger)",
        lambda candidate, names: builder._build_tflite(candidate, "int8", input_dtype, float_nodes=names))


def _openvino(builder, input_dtype: str, path: Path, inputs: np.ndarray):
    from . import openvino as ov_export

    _, details = builder.openvino_fp32(input_dtype)
    model, extra = ov_export.quantize_int8_accuracy_aware(
        builder.read_openvino(input_dtype), builder.calib, input_dtype, inputs,
        builder.reference.argmax(-1), builder.config.min_agreement, builder.int8_weights("openvino"))
    ov_export.save(model, path)
    float_layers = ov_export.float_layer_names(model)
    parity, runtime = builder.check(path, "int8", input_dtype)
    return path, {**details, **extra}, parity, runtime, float_layers


def _tflite_dynamic_fallback(builder, input_dtype: str, path: Path):
    details = builder._build_tflite(path, "int8", input_dtype, fallback="dynamic")
    float_layers = ["all activations (dynamic-range fallback: int8 weights, float activations)"]
    parity, runtime = builder.check(path, "int8", input_dtype)
    return path, details, parity, runtime, float_layers
