"""ONNX artifacts: tf2onnx conversion (FP32), ONNX Runtime quantization (INT8 static, dynamic) and fp16,
and ``OnnxBackend``, the export backend that runs them for each mode.

INT8 recipe (``quantize_int8``): ``quant_pre_process`` (shape inference + ORT graph optimisation, so BN
is folded and Conv+Relu fused before ranges are collected), then static QDQ quantization with uint8
activations and per-channel int8 weights (U8S8), MinMax ranges by default, then bias correction
(``onnx_bias``). Why each choice, with the measurements: tools/RESULTS-export.md ("ONNX INT8 recipe")
and tools/RESULTS-accuracy.md ("A2. PTQ fixes").
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ...choices import CalibrationMethod, Format, Mode
from ...errors import UsageError
from .. import pairs
from ..calibration import CHUNK, CalibrationSet, ort_data_reader
from .base import ExportBackend

log = logging.getLogger("edgetl")

DEFAULT_OPSET = 17  # tf2onnx 1.17 supports opsets <= 18; 17 is what ORT, OpenVINO and TensorRT all read
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

    from ..keras_graph import INPUT_NAME

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
    _name_output_and_batch(path, output_name)
    return {"converter": converter, "opset": opset}


def _name_output_and_batch(path: Path, name_for_single: str | None = None) -> None:
    """Name the batch dimension 'batch' (tf2onnx writes a symbolic 'unk__123'; it is symbolic either
    way, from the (None, H, W, 3) input signature) and, with ``name_for_single``, rename a single graph
    output to it (and every reference to the old name)."""
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
    with _held_records("onnxruntime.quantization.shape_inference") as held:
        quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
    if held:  # ORT logs its optimiser's failure with a traceback and goes on without the optimiser
        log.warning("ONNX Runtime's graph optimiser failed (%s); the INT8 model is made from the "
                    "unoptimised graph", held[-1].getMessage().strip().splitlines()[-1])


@contextlib.contextmanager
def _held_records(logger_name: str):
    """The WARNING+ records of one third-party logger, kept from the console while the block runs
    (a failure in the block then ends in edgetl's one line, not a logged traceback before it)."""
    logger, records = logging.getLogger(logger_name), []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    previous = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate = previous


class _DropOrtQuantizationInfo(logging.Filter):
    """onnxruntime.quantization logs one INFO line per tensor with module-level ``logging.info``, i.e.
    through the root logger itself, not a named one: this drops exactly those records (by source file)
    and leaves the root logger's level, and everyone else's records, alone."""

    def __init__(self):
        super().__init__()
        import onnxruntime.quantization

        self.package = str(Path(onnxruntime.quantization.__file__).parent)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.pathname.startswith(self.package)


@contextlib.contextmanager
def quiet_ort_quantization():
    """Keep onnxruntime.quantization's per-tensor INFO lines out of the log (its warnings stay)."""
    root, dropper = logging.getLogger(), _DropOrtQuantizationInfo()
    root.addFilter(dropper)
    try:
        yield
    finally:
        root.removeFilter(dropper)


def _ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod as OrtMethod

    return {CalibrationMethod.MINMAX: OrtMethod.MinMax, CalibrationMethod.ENTROPY: OrtMethod.Entropy,
            CalibrationMethod.PERCENTILE: OrtMethod.Percentile}[method]


def calibrate(pre_path: Path, calib: CalibrationSet, input_dtype: str, method: str, cache: Path) -> None:
    """Collect activation ranges once (chunked) into an ORT calibration cache file."""
    import onnx
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    input_name = onnx.load(str(pre_path)).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="edgetl-calib-") as tmp:
        calibrator = create_calibrator(pre_path, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=_ort_method(method),
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
                  int8_weights: str = "full", bias_calib: CalibrationSet | None = None,
                  input_dtype: str = "float32") -> dict[str, Any]:
    """``int8_weights`` (tools/RESULTS-export.md, "ONNX INT8 recipe"): ``full`` 8-bit, ``pair-safe`` (``bound_weight_pairs``)
    or ``7-bit`` (ORT's ``reduce_range``; pair-safe beats it on accuracy at the same speed).
    ``bias_calib``: correct the biases for the weights' rounding and bounding on these images
    (``onnx_bias.correct_biases``; QDQ only)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if int8_weights not in pairs.INT8_WEIGHTS[1:]:
        raise UsageError(f"unknown ONNX int8 weights {int8_weights!r}; choose from {', '.join(pairs.INT8_WEIGHTS[1:])}")
    reduce_range = int8_weights == "7-bit"

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
    with quiet_ort_quantization():
        quantize_static(str(pre_path), str(out_path), calibration_data_reader=None,
                        quant_format=QuantFormat.QDQ if quant_format == "QDQ" else QuantFormat.QOperator,
                        per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=_ort_method(method),
                        nodes_to_exclude=nodes_to_exclude or [], extra_options=extra_options,
                        calibration_cache_path=str(cache))
    details = {"quant_format": quant_format, "activation_type": "uint8", "weight_type": "int8",
               "per_channel": True, "int8_weights": int8_weights, "calibration_method": method,
               "histogram": _HISTOGRAM_OPTIONS[method] or None, "preprocessed": "quant_pre_process",
               "extra_options": extra_options}
    if int8_weights == "pair-safe":
        details["pair_safe"] = bound_weight_pairs(out_path)
    if bias_calib is not None and quant_format == "QDQ":
        # Bias correction after rounding and pair bounding: lite0 zero-shot (121 photos), agreement with
        # FP32 full 8-bit 119 -> 121/121 (cosine 0.9948 -> 0.9977), pair-safe 117 -> 120/121 (0.9904 ->
        # 0.9967), same latency (tools/RESULTS-accuracy.md, "A2. PTQ fixes").
        from .onnx_bias import correct_biases

        details["bias_correction"] = correct_biases(out_path, pre_path, bias_calib, input_dtype)
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
        if node.op_type == "Conv" and q.shape[1] == 1:
            continue  # depthwise
        layout = pairs.weight_layout(node.op_type == "Conv",
                                     any(a.name == "transB" and a.i for a in node.attribute))
        axis = next((a.i for a in w_dq.attribute if a.name == "axis"), 1)
        if scale.size > 1 and axis != pairs.channel_axis(layout):
            continue  # per-channel along another axis than the output channels: not ours
        weights = pairs.dequantize(q, scale, axis)
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
    magnitudes is what loses accuracy, and ConvInteger has no depthwise kernel (measured:
    tools/RESULTS-export.md, "ONNX dynamic: depthwise convolutions in float")."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="edgetl-dyn-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        preprocess(fp32_path, pre)
        depthwise = [node.name for node in onnx.load(str(pre)).graph.node
                     if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)]
        with quiet_ort_quantization():
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


def io_names(path: Path) -> dict[str, dict[str, str]]:
    """``InferenceSession.get_inputs()[0].name`` / ``get_outputs()[0].name``: the graph's value names
    (``session.run(["logits"], {"image": x})``)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    inputs = [v.name for v in graph.input if v.name not in initializers]
    return {"input": {"name": inputs[0], "tensor_name": inputs[0]},
            "output": {"name": graph.output[0].name, "tensor_name": graph.output[0].name}}


class OnnxBackend(ExportBackend):
    """tf2onnx once per input dtype, then ORT's float16 converter / quantizers on that FP32 graph."""

    format = Format.ONNX
    extension = ".onnx"
    methods = {Mode.FP16: "onnxruntime.transformers.float16", Mode.DYNAMIC: "onnxruntime quantize_dynamic",
               Mode.INT8: "onnxruntime quantize_static (QDQ, U8S8)"}
    # Full 8-bit everywhere: ONNX Runtime has exact kernels that the runtime turns on where the CPU needs them.
    auto_int8_weights = "full"

    @property
    def modes(self) -> tuple[Mode, ...]:
        import importlib.util

        try:
            fp16 = importlib.util.find_spec("onnxruntime.transformers.float16") is not None
        except ImportError:
            fp16 = False
        return tuple(m for m in Mode if fp16 or m != Mode.FP16)

    def fp32(self, job, input_dtype: str) -> tuple[Path, dict]:
        """The FP32 ONNX graph (made once per export call and input dtype) and how it was converted."""
        def make():
            if job.source.source_kind == "onnx":  # the given file is the FP32 graph
                from ..sources.onnx_source import fp32_file

                return fp32_file(job.source, job.work), {"converter": "none (the given ONNX file)"}
            path = job.work / f"onnx_fp32_{input_dtype}.onnx"
            return path, convert(job.keras_graph(input_dtype), path, input_dtype, job.config.opset,
                                 output_name=job.source.output_kind)

        return job.cached(("onnx", input_dtype), make)

    def ranges(self, job, input_dtype: str) -> tuple[Path, Path]:
        """(pre-processed FP32 graph, ORT calibration cache of its activation ranges), made once."""
        def make():
            fp32, _ = self.fp32(job, input_dtype)
            pre = job.work / f"onnx_pre_{input_dtype}.onnx"
            preprocess(fp32, pre)
            cache = job.work / f"onnx_ranges_{input_dtype}.json"
            calibrate(pre, job.calib, job.calib_input(self, input_dtype), job.config.calib_method, cache)
            return pre, cache

        return job.cached(("onnx ranges", input_dtype), make)

    def convert(self, job, path: Path, mode: str, input_dtype: str) -> dict[str, Any]:
        import shutil

        fp32, details = self.fp32(job, input_dtype)
        if mode == Mode.FP16:
            return {**details, **to_fp16(fp32, path)}
        shutil.copyfile(fp32, path)
        return dict(details)

    def quantize(self, job, path: Path, mode: str, input_dtype: str,
                 nodes_to_exclude: list[str] | None = None) -> dict[str, Any]:
        fp32, details = self.fp32(job, input_dtype)
        if mode == Mode.DYNAMIC:
            return {**details, **quantize_dynamic(fp32, path)}
        if job.config.qat_epochs:
            from ..qat_formats import qat_qdq

            return {**details, **qat_qdq(job, path, input_dtype, job.int8_weights(self))}
        pre, cache = self.ranges(job, input_dtype)
        return {**details, **quantize_int8(pre, path, cache, job.config.calib_method, nodes_to_exclude,
                                           int8_weights=job.int8_weights(self),
                                           bias_calib=job.calib if job.config.bias_correction else None,
                                           input_dtype=job.calib_input(self, input_dtype))}

    def make_accurate(self, job, path: Path, input_dtype: str, details: dict) -> tuple:
        """Rank Conv/Gemm nodes by their own INT8 error, then leave the worst out of quantization (their
        Q/DQ pairs), 1, 2, 4, ... of them; ranges come from the cached calibration."""
        from ..sensitivity import RANK_IMAGES, float_until_passing, rank_onnx_nodes

        pre, _ = self.ranges(job, input_dtype)
        ranked = rank_onnx_nodes(pre, path, job.model_inputs(input_dtype)[:RANK_IMAGES])
        return float_until_passing(
            job, self, input_dtype, path, details, ranked, "relative L2 error of the output minus that of the input",
            lambda candidate, excluded: self.quantize(job, candidate, Mode.INT8, input_dtype, excluded))

    def runtime_options(self, job, mode: str) -> dict[str, Any]:
        # Parity runs before the sidecar exists, so the weight choice is passed, not read from it.
        if mode != Mode.INT8:
            return {}
        from ...runtime.backends import exact_int8_for

        return {"exact_int8": exact_int8_for(int8_weights=job.int8_weights(self))}

    def io_names(self, path: Path) -> dict[str, dict[str, str | None]]:
        return io_names(path)

    def embed(self, path: Path, described: dict[str, Any]) -> dict[str, Any]:
        from ..embedded_metadata import embed_onnx

        embed_onnx(path, described)
        return {}
