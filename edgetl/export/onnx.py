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
* Full 8-bit weights, and ONNX Runtime's exact U8U8 kernels on x86 CPUs without VNNI. There the
  default U8S8 kernels (``vpmaddubsw``) sum pairs of products into a saturating int16. Measured on
  efficientnet_lite0 zero-shot (121 photos; FP32 top-1 0.876), batch 1, 2 threads, latency vs ORT FP32
  (tools/RESULTS-export.md):

  ================================================  =========  ======  ========  =======
  weights / kernels                                 agreement  cosine  accuracy  latency
  ================================================  =========  ======  ========  =======
  8-bit, default U8S8 kernels (saturating)          0.926      0.921   0.835     0.69x
  7-bit (``reduce_range``), U8S8 kernels            0.934      0.978   0.860     0.71x
  8-bit, ``session.x64quantprecision=1`` (U8U8)     0.983      0.995   0.876     1.00x
  8-bit as float fake-quant (no integer kernels)    0.992      0.995   0.876     -
  ================================================  =========  ======  ========  =======

  7-bit weights lose as much in float as they gain in the kernels (their fake-quant run reads 0.934
  too), and they would be baked into an artifact that VNNI and ARM CPUs run exactly anyway. So the
  artifact keeps 8-bit weights and the *runtime* picks exact kernels where the CPU needs them
  (``edgetl.runtime.cpu``); ``reduce_range=True`` stays available for a fast, lossier AVX2 build.
  Uint8 weights (U8U8 in the graph) are not an alternative: ORT does not fuse them into QLinearConv
  and ran them 8x slower than FP32.
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

from ..errors import UsageError
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


def convert(model, path: Path, input_dtype: str, opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Keras model -> ONNX with a dynamic batch dimension. Returns how it was converted."""
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
    _rename_output(path)
    return {"converter": converter, "opset": opset}


def _rename_output(path: Path, name_for_single: str | None = None) -> None:
    """Make the batch dimension symbolic as 'batch' (tf2onnx writes 'unk__123')."""
    import onnx

    model = onnx.load(str(path))
    changed = False
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
                  reduce_range: bool = False) -> dict[str, Any]:
    """``reduce_range``: 7-bit weights, for CPUs without VNNI run with ``exact_int8=False`` (see the
    module docstring: faster there, less accurate everywhere)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

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
    return {"quant_format": quant_format, "activation_type": "uint8", "weight_type": "int8",
            "per_channel": True, "reduce_range": reduce_range, "calibration_method": method,
            "histogram": _HISTOGRAM_OPTIONS[method] or None, "preprocessed": "quant_pre_process",
            "extra_options": extra_options}


def quantize_dynamic(fp32_path: Path, out_path: Path) -> dict[str, Any]:
    """INT8 weights, activations quantized on the fly. ORT's CPU ConvInteger takes uint8 weights
    only (int8 weights fail to load), so weights are QUInt8 here."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="edgetl-dyn-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        preprocess(fp32_path, pre)
        with quiet_root_logger():
            ort_quantize_dynamic(str(pre), str(out_path), weight_type=QuantType.QUInt8, per_channel=False)
    return {"weight_type": "uint8", "per_channel": False, "activations": "quantized per call (dynamic)"}


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
