"""ONNX artifacts: tf2onnx conversion (FP32), ONNX Runtime quantization (INT8 static, dynamic) and fp16.

INT8 recipe (``quantize_int8``): ``quant_pre_process`` (shape inference + ORT graph optimisation, so BN
is folded and Conv+Relu fused before ranges are collected), then static quantization with uint8
activations and per-channel int8 weights (U8S8).

* U8S8 rather than S8S8: ORT's x86 integer kernels take uint8 activations x int8 weights natively; int8
  activations are converted back: S8S8 agreed 0.992 but ran at 1.27x of FP32 latency (U8S8 1.00x).
* QDQ rather than QOperator: both are built from the same ranges and timed by tools/bench_export.py
  (batch 1, interleaved rounds; table in tools/RESULTS-export.md). ORT fuses QDQ groups into the same
  QLinearConv kernels QOperator emits: identical outputs (agreement 0.983 both on efficientnet_lite0),
  latency equal in one run and QOperator 8% faster in another, while QDQ keeps the float graph readable (``nodes_to_exclude`` simply leaves a node's Q/DQ pair out, which accuracy-aware
  export relies on) and is the form other EPs (TensorRT, QNN, OpenVINO) consume.
* INT8 weights for x86 CPUs without VNNI. There the default U8S8 kernels (``vpmaddubsw``) add pairs of
  uint8 x int8 products into a saturating int16. Measured on efficientnet_lite0 zero-shot (121 photos;
  FP32 top-1 0.876), batch 1, 2 threads, latency vs ORT FP32 (tools/RESULTS-export.md):

  ================================================  =========  ======  ========  =======
  weights (``int8_weights``) / kernels              agreement  cosine  accuracy  latency
  ================================================  =========  ======  ========  =======
  ``full`` 8-bit, default U8S8 kernels (saturate)   0.926      0.921   0.835     0.69x
  ``full`` 8-bit, ``x64quantprecision=1`` (U8U8)    0.983      0.995   0.876     0.84-1.0x
  ``pair-safe``, default U8S8 kernels (exact)       0.967      0.990   0.876     0.63-0.74x
  ``7-bit`` (``reduce_range``), U8S8 kernels        0.934      0.978   0.860     0.71-0.80x
  8-bit as float fake-quant (no integer kernels)    0.992      0.995   0.876     -
  ================================================  =========  ======  ========  =======

  ``full`` (what ``--int8-weights auto`` means for ONNX): the artifact keeps 8-bit weights and the *runtime* picks ORT's exact kernels where
  the CPU needs them (``edgetl.runtime.cpu``): most accurate everywhere, but no faster than FP32 on such
  a CPU. ``pair-safe`` (``bound_weight_pairs``, ``export.pairs``) makes the weights unable to saturate: the
  fast kernels are exact on every CPU, for about 0.4 bit of weight precision; on the fine-tuned
  efficientnet_lite0 (49 val photos) it agrees 1.000 with FP32 like ``full``. ``7-bit`` gives up a
  whole bit for the same guarantee and loses to pair-safe on every count. Uint8 weights (U8U8 in the
  graph) are not an alternative: ORT does not fuse them into QLinearConv and ran them 8x slower than FP32.
* MinMax ranges by default: on efficientnet_lite0, Percentile (99.999) gave the same agreement (0.983)
  and Entropy was worse (0.868, cosine 0.848): ReLU6 bounds activations, so clipping buys nothing.
  For the same reason, set size hardly matters: 16, 32, 64 and 120 calibration photos gave 0.983-0.992
  (one image apart) and equal accuracy.
* Ranges are collected once per artifact into an ORT calibration cache; Entropy/Percentile histograms
  get explicit bin counts (ORT's Entropy default of 128 bins for 128 quantized bins degenerates to MinMax).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from . import pairs
from .calibration import CHUNK, CalibrationSet, ort_data_reader

log = logging.getLogger("edgetl")

DEFAULT_OPSET = 17  # tf2onnx 1.17 supports opsets <= 18; 17 is what ORT, OpenVINO and TensorRT all read
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Histogram settings, explicit: 2048 collected bins, 128 quantized bins for 8 bit (TensorRT's recipe).
_HISTOGRAM_OPTIONS = {
    "entropy": {"num_bins": 2048, "num_quantized_bins": 128, "symmetric": False},
    "percentile": {"num_bins": 2048, "percentile": 99.999, "symmetric": False},
    "minmax": {},
}


def convert(model, path: Path, input_dtype: str, opset: int = DEFAULT_OPSET,
            output_name: str | None = None) -> dict[str, Any]:
    """Keras model -> ONNX with a dynamic batch dimension, its single output renamed ``output_name``
    (tf2onnx names it after the last Keras layer or nested model, e.g. ``logits_model`` behind a
    uint8 input). Returns how it was converted."""
    import tensorflow as tf
    import tf2onnx

    from .keras_graph import INPUT_NAME

    if not 7 <= opset <= 18:
        raise UsageError(f"--opset {opset} is not supported by tf2onnx 1.17; use 13..18")
    height, width = model.inputs[0].shape[1:3]
    spec = [tf.TensorSpec((None, height, width, 3), tf.as_dtype(input_dtype), name=INPUT_NAME)]
    attempts = []
    try:
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset, output_path=str(path))
        converter = "tf2onnx.from_keras"
    except Exception as exc:  # nested Keras 3 models have broken from_keras before: trace a function
        attempts.append(f"from_keras: {str(exc).splitlines()[0][:150]}")
        try:
            function = tf.function(lambda x: model(x, training=False))
            tf2onnx.convert.from_function(function, input_signature=spec, opset=opset, output_path=str(path))
            converter = "tf2onnx.from_function"
        except Exception as exc2:
            attempts.append(f"from_function: {str(exc2).splitlines()[0][:150]}")
            log.warning("tf2onnx failed (%s); falling back to keras model.export(format='onnx')",
                        "; ".join(attempts))
            model.export(str(path), format="onnx", verbose=False)
            converter = "keras.export"
    _rename_output(path, output_name)
    return {"converter": converter, "opset": opset}


def _rename_output(path: Path, name_for_single: str | None = None) -> None:
    """Make the batch dimension symbolic as 'batch' (tf2onnx writes 'unk__123'); with
    ``name_for_single``, rename a single graph output to it (and every reference to the old name)."""
    import onnx

    model = onnx.load(str(path))
    changed = False
    outputs = model.graph.output
    if name_for_single and len(outputs) == 1 and outputs[0].name != name_for_single:
        old = outputs[0].name
        for node in model.graph.node:
            node.output[:] = [name_for_single if o == old else o for o in node.output]
            node.input[:] = [name_for_single if i == old else i for i in node.input]
        outputs[0].name = name_for_single
        changed = True
    for value in list(model.graph.input) + list(model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        if not dim.HasField("dim_value") and dim.dim_param != "batch":
            dim.dim_param = "batch"
            changed = True
    if changed:
        onnx.save(model, str(path))


def node_names(path: Path, op_types: tuple[str, ...] = ("Conv", "Gemm", "MatMul")) -> list[str]:
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in op_types]


def preprocess(fp32_path: Path, out_path: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Symbolic shape inference needs sympy (not a dependency) and only matters for dynamic-shape
    # transformer graphs; ONNX shape inference + ORT's optimiser (BN folding, fusions) is what CNNs need.
    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)


@contextlib.contextmanager
def quiet_root_logger():
    """onnxruntime.quantization logs one INFO line per tensor to the root logger; keep it to warnings."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def calibrate(pre_path: Path, calib: CalibrationSet, input_dtype: str, method: str, cache: Path) -> None:
    """Collect activation ranges once (chunked) into an ORT calibration cache file."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    import onnx

    input_name = onnx.load(str(pre_path)).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="edgetl-calib-") as tmp:
        calibrator = create_calibrator(pre_path, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=methods[method],
                                       extra_options=_HISTOGRAM_OPTIONS[method])
        # ORT's histogram collector stacks each tensor's batches with np.asarray, which fails on a short
        # last chunk: histogram methods get one image per step, MinMax the memory-friendly chunks.
        chunk = CHUNK if method == "minmax" else 1
        calibrator.collect_data(ort_data_reader(calib, input_name, input_dtype, chunk))
        ranges = calibrator.compute_data()
        del calibrator
    save_tensors_data(ranges, cache)


def quantize_int8(pre_path: Path, out_path: Path, cache: Path, method: str,
                  nodes_to_exclude: list[str] | None = None, quant_format: str = "QDQ",
                  int8_weights: str = "full") -> dict[str, Any]:
    """``int8_weights`` (see the module docstring): ``full`` 8-bit, ``pair-safe`` (``bound_weight_pairs``)
    or ``7-bit`` (ORT's ``reduce_range``; pair-safe beats it on accuracy at the same speed)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if int8_weights not in pairs.INT8_WEIGHTS[1:]:
        raise UsageError(f"unknown ONNX int8 weights {int8_weights!r}; choose from {', '.join(pairs.INT8_WEIGHTS[1:])}")
    reduce_range = int8_weights == "7-bit"

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    extra_options = {
        # Keep weights' per-channel ranges symmetric (int8 -127..127, zero point 0): what the integer
        # kernels assume; activations stay asymmetric uint8 since post-ReLU6 ranges are one-sided
        # (symmetric activations would waste half the uint8 range on values that never occur).
        "WeightSymmetric": True,
        "ActivationSymmetric": False,
    }
    # Left at their defaults, on purpose:
    # * CalibMovingAverage: averages per-batch min/max, i.e. clips rare extremes; the same trade as
    #   Percentile, which is measured against MinMax in tools/RESULTS-export.md.
    # * QDQKeepRemovableActivations: False (default) lets Relu/Clip fold into the quantized range, one
    #   fewer op per block; keeping them bought no agreement on these CNNs.
    # * SmoothQuant: migrates activation outliers of transformer MatMuls into weights and needs
    #   neural_compressor (not a dependency); these CNNs have no such MatMuls (one Gemm head).
    with quiet_root_logger():
        quantize_static(str(pre_path), str(out_path), calibration_data_reader=None,
                        quant_format=QuantFormat.QDQ if quant_format == "QDQ" else QuantFormat.QOperator,
                        per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=methods[method],
                        nodes_to_exclude=nodes_to_exclude or [], extra_options=extra_options,
                        calibration_cache_path=str(cache))
    details = {"quant_format": quant_format, "activation_type": "uint8", "weight_type": "int8",
               "per_channel": True, "int8_weights": int8_weights, "calibration_method": method,
               "histogram": _HISTOGRAM_OPTIONS[method] or None, "preprocessed": "quant_pre_process",
               "extra_options": extra_options}
    if int8_weights == "pair-safe":
        details["pair_safe"] = bound_weight_pairs(out_path)
    return details


def bound_weight_pairs(path: Path) -> dict[str, Any]:
    """Re-quantize a QDQ model's int8 GEMM weights (Conv, Gemm, MatMul) pair-safe (``export.pairs``):
    ORT's fast U8S8 kernels then compute exactly what its U8U8 ones do, so the artifact needs no runtime
    switch on any CPU. Biases (int32 at input scale x weight scale) follow the new scales."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    initializers = {init.name: init for init in model.graph.initializer}
    producers = {output: node for node in model.graph.node for output in node.output}

    def array(dq, index):
        name = dq.input[index] if len(dq.input) > index else None
        return numpy_helper.to_array(initializers[name]) if name in initializers else None

    def replace(name, value):
        initializers[name].CopyFrom(numpy_helper.from_array(value, name))

    growth, done = [], set()
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        x_dq, w_dq = producers.get(node.input[0]), producers.get(node.input[1])
        if not (x_dq and w_dq and x_dq.op_type == w_dq.op_type == "DequantizeLinear"):
            continue  # left in float (nodes_to_exclude) or not a weight
        q, scale, zero_point = (array(w_dq, i) for i in range(3))
        if q is None or q.dtype != np.int8 or scale is None or w_dq.input[0] in done:
            continue
        if zero_point is not None and np.any(zero_point != 0):
            continue  # asymmetric weights: not what quantize_int8 writes
        if node.op_type == "Conv":
            if q.shape[1] == 1:
                continue  # depthwise
            layout = "conv"
        else:
            layout = "nk" if any(a.name == "transB" and a.i for a in node.attribute) else "kn"
        axis = next((a.i for a in w_dq.attribute if a.name == "axis"), 1)
        if scale.size > 1 and axis != pairs.channel_axis(layout):
            continue  # per-channel along another axis than the output channels: not ours
        shape = [1] * q.ndim
        shape[axis] = -1
        weights = q.astype(np.float64) * (scale.reshape(shape) if scale.size > 1 else scale)
        new_q, new_scale = pairs.requantize(weights, scale, layout)
        replace(w_dq.input[0], new_q)
        replace(w_dq.input[1], new_scale)
        done.add(w_dq.input[0])
        growth.append(pairs.scale_growth(scale, new_scale))
        bias_dq = producers.get(node.input[2]) if len(node.input) > 2 else None
        if bias_dq is not None and bias_dq.op_type == "DequantizeLinear":
            bias_q, bias_scale, x_scale = array(bias_dq, 0), array(bias_dq, 1), array(x_dq, 1)
            if bias_q is not None and bias_q.dtype == np.int32 and x_scale is not None:
                target = (x_scale.astype(np.float64) * new_scale).astype(bias_scale.dtype)
                bias = bias_q.astype(np.float64) * bias_scale
                replace(bias_dq.input[0], np.round(bias / target).astype(np.int32))
                replace(bias_dq.input[1], target)
    onnx.save(model, str(path))
    return pairs.summary(growth)


def quantize_dynamic(fp32_path: Path, out_path: Path) -> dict[str, Any]:
    """INT8 weights, activations quantized on the fly. ORT's CPU ConvInteger takes uint8 weights
    only (int8 weights fail to load), so weights are QUInt8 here, one scale per tensor.

    Depthwise convolutions stay float: a per-tensor scale over 9-tap filters of very different
    magnitudes is what loses accuracy, and ConvInteger has no depthwise kernel. On the fine-tuned
    efficientnet_lite0 (49 val photos): agreement 0.980 -> 1.000, cosine 0.948 -> 0.976, latency 3.1x
    -> 1.16x of FP32, size 0.26x -> 0.30x (depthwise weights are 5% of the model)."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="edgetl-dyn-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        preprocess(fp32_path, pre)
        depthwise = [node.name for node in onnx.load(str(pre)).graph.node
                     if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)]
        with quiet_root_logger():
            ort_quantize_dynamic(str(pre), str(out_path), weight_type=QuantType.QUInt8, per_channel=False,
                                 nodes_to_exclude=depthwise)
    return {"weight_type": "uint8", "per_channel": False, "activations": "quantized per call (dynamic)",
            "float_nodes": f"{len(depthwise)} depthwise convolutions"}


def to_fp16(fp32_path: Path, out_path: Path) -> dict[str, Any]:
    """FP16 weights and compute, float32 I/O kept so the runtime feeds the same tensors."""
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        raise UsageError("--quantize fp16 for onnx needs onnxruntime.transformers (not in this "
                         "onnxruntime); fp16 is supported by tflite and openvino") from None
    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    onnx.save(model, str(out_path))
    return {"converter": "onnxruntime.transformers.float16", "keep_io_types": True}
