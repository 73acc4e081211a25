"""Accuracy-aware INT8: when an INT8 artifact misses ``--min-agreement``, keep the fewest, most
quantization-sensitive layers in float until it holds.

The search is format-free (``make_accurate``, ``float_until_passing``); each export backend's
``make_accurate`` supplies its ranking and re-quantization. ONNX (the precise path): both the pre-processed FP32 graph and its QDQ model expose every intermediate
tensor under the same name (QDQ only inserts Q/DQ pairs after them), so each Conv/Gemm's *own*
contribution is measured as ``relerr(output) - relerr(input)`` against the FP32 activations on the
parity images. Layers are excluded in that order (``nodes_to_exclude``: their Q/DQ pairs are left out),
doubling the count (1, 2, 4, ...) until the threshold holds; ranges come from the cached calibration,
so each retry is a re-quantization, not a re-calibration.

OpenVINO: NNCF's own accuracy control (``nncf.quantize_with_accuracy_control``, metric = top-1 agreement
with the Keras model on the parity images) reverts the fewest layers to float. TFLite: its
QuantizationDebugger ranks every quantized op by RMSE / scale of its own output (float references run
beside each op) and then builds selectively quantized models with the worst ops denylisted, in the same
1, 2, 4, ... search as ONNX; uint8-input artifacts, which the debugger cannot make, fall back to
dynamic-range quantization (INT8 weights, float activations). ``float_layers`` records what stayed float
(OpenVINO: convolutions whose weights are not quantized; TFLite: op output tensors), and the sidecar's
``accuracy_aware`` block the latency cost measured at export.

Measured: tools/RESULTS-export.md ("Accuracy-aware INT8: the first measurements").
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from ..choices import Mode
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


def make_accurate(job, backend, path: Path, input_dtype: str, details: dict, parity: dict):
    """Returns (path, details, parity, runtime, float_layers) of the artifact that meets the threshold
    (or of the best attempt, still marked failing, when even all candidates in float do not), with the
    latency cost measured at export in ``details["accuracy_aware"]``."""
    inputs = job.model_inputs(input_dtype)
    options = backend.runtime_options(job, Mode.INT8)
    full_int8_ms = latency_ms(path, inputs, **options)
    full_int8_agreement = parity["top1_agreement"]
    path, details, parity, runtime, float_layers = backend.make_accurate(job, path, input_dtype, details)
    details = dict(details)
    details["accuracy_aware"] = {"full_int8_latency_ms": full_int8_ms,
                                 "latency_ms": latency_ms(path, inputs, **options),
                                 "full_int8_agreement": full_int8_agreement, "float_layers": len(float_layers),
                                 "runs": LATENCY_RUNS, "batch": 1}
    return path, details, parity, runtime, float_layers


def float_until_passing(job, backend, input_dtype: str, path: Path, details: dict, ranked: list[tuple[str, float]],
                        measure: str, quantize_keeping_float) -> tuple:
    """Re-quantize with the 1, 2, 4, ... worst-ranked layers in float until parity passes (or all are);
    ``quantize_keeping_float(candidate_path, names) -> details``. Keeps the best attempt in ``path``;
    ``measure`` names what the ranking scores are."""
    candidate = path.with_name(f"{path.stem}.trial{path.suffix}")
    # Full INT8 is the attempt to beat: a trial replaces it only when it agrees better, so a search
    # that finds nothing never ships float layers (and their latency) for no gain.
    full_parity, full_runtime = job.measure_parity(backend, path, Mode.INT8, input_dtype)
    best = (details, full_parity, full_runtime, [])
    count = 1
    while True:
        kept = [name for name, _ in ranked[:count]]
        try:
            trial_details = quantize_keeping_float(candidate, kept)
        except Exception as exc:  # e.g. TFLite's debugger refuses a graph with (almost) nothing quantized
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            if count == 1:
                raise CheckFailed(f"{path.name}: accuracy-aware re-quantization failed ({reason})") from None
            log.warning("accuracy-aware: stopped at %d layer(s) in float: %s", count, reason)
            break
        trial_parity, runtime = job.measure_parity(backend, candidate, Mode.INT8, input_dtype)
        log.info("accuracy-aware: %d layer(s) in float -> agreement %.3f", count, trial_parity["top1_agreement"])
        if trial_parity["top1_agreement"] > best[1]["top1_agreement"]:
            shutil.move(candidate, path)
            best = ({**details, **trial_details}, trial_parity, runtime, kept)
        if trial_parity["passed"] or count >= len(ranked):
            break
        count = min(count * 2, len(ranked))
    candidate.unlink(missing_ok=True)
    details, parity, runtime, kept = best
    if not kept:
        log.warning("accuracy-aware: no set of layers in float agreed better than full INT8; keeping full INT8")
    details["sensitivity"] = {"measure": measure, "ranked": [{"node": n, "own_error": round(e, 6)}
                                                              for n, e in ranked[:max(8, len(kept))]]}
    return path, details, parity, runtime, kept
