"""TFLite (LiteRT) artifacts through ``tf.lite.TFLiteConverter``, and ``TfliteBackend``, the export backend
that runs the converter for each mode.

``from_concrete_functions`` given the Keras model as trackable silently writes a model that outputs NaN
with TF 2.21/Keras 3.15. ``from_keras_model`` is Keras' own SavedModel export followed by
``from_saved_model``, and it redoes that export on every call (lite0 at 96 px: 2.6 of its 5.4 s); an
export converts one graph for up to four modes and a float reference, so the graph's SavedModel is
exported once (``converter_for``, in the export's scratch) and each mode converts from it. The graph
is wrapped so its output is a dict ``{output_name: tensor}``: the signature's output key is then ``logits`` (or
``probabilities``), what the sidecar says, instead of the converter's ``output_0``; the input key is the
Keras input's name, ``image``. ``io_names`` reads back what a client sees.

Modes: fp32; fp16 (float16 weights, float compute on CPU); dynamic (int8 weights, dynamic-range
activations); int8 (full integer, builtins INT8 only, calibrated on the representative set). INT8
outputs stay float32 (a dequantize at the end): the logits' own scale would otherwise leak into every
consumer, and a softmax output would get TFLite's fixed 1/256 scale.
"""

from __future__ import annotations

import contextlib
import functools
import io
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from ...choices import Format, InputDtype, Mode
from ..calibration import CalibrationSet
from .base import ExportBackend


CONVERTER = "TFLiteConverter.from_saved_model (Keras export, once per graph)"

# The SavedModel of each graph converted so far, per output name (weak keys: it lives as long as the
# graph object, i.e. one export job).
_SAVED_MODELS: "weakref.WeakKeyDictionary[Any, dict[str, Path]]" = weakref.WeakKeyDictionary()


def converter_for(model, output_name: str):
    """``TFLiteConverter.from_saved_model`` of ``named_output(model, output_name)``, exported once per
    graph object (what ``from_keras_model`` does on every call)."""
    import keras
    import tensorflow as tf

    exports = _SAVED_MODELS.setdefault(model, {})
    saved = exports.get(output_name)
    if saved is None or not saved.is_dir():  # a later export's scratch no longer holds an earlier one
        graph = named_output(model, output_name)
        folder = tempfile.mkdtemp(prefix="tflite-savedmodel-")  # in an export: its scratch
        weakref.finalize(model, shutil.rmtree, folder, True)  # with the graph, or at exit
        saved = Path(folder) / "model"
        # As from_keras_model does for a Keras 3 functional model: the call with training=False, the
        # inputs' own names in the signature.
        archive = keras.export.ExportArchive()
        archive.track(graph)
        signature = [tf.TensorSpec(x.shape, dtype=x.dtype, name=x.name) for x in graph.inputs]
        archive.add_endpoint("serve", functools.partial(graph.__call__, training=False), signature)
        with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the signature
            archive.write_out(str(saved), verbose=False)
        exports[output_name] = saved
    return tf.lite.TFLiteConverter.from_saved_model(str(saved))


def convert(model, path: Path, mode: str, calib: CalibrationSet | None = None,
            calib_input: str = "float32", uint8_input: bool = False,
            float_nodes: list[str] | None = None, output_name: str = "logits",
            float_ops: tuple[str, ...] = ()) -> dict[str, Any]:
    """``calib_input`` is how calibration batches are made for this graph (see CalibrationSet.batches);
    ``uint8_input`` with int8 makes the converter expose a uint8 input tensor. ``float_nodes`` (int8,
    float input only): output tensor names of ops to leave in float (selective quantization through
    TFLite's QuantizationDebugger; the rest stays full-integer); ``float_ops`` the same by op type."""
    import tensorflow as tf

    if float_nodes or float_ops:
        return _convert_selective(model, path, calib, calib_input, list(float_nodes or []), float_ops, output_name)
    converter = converter_for(model, output_name)
    details: dict[str, Any] = {"converter": CONVERTER}
    if mode == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
        details["weights"] = "float16"
    elif mode == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        details["weights"] = "int8 (dynamic range)"
    elif mode == "int8":
        full_integer(converter, calib, calib_input, tf.uint8 if uint8_input else None)
        details.update(weights="int8 per-channel", activations="int8 per-tensor",
                       io={"input": "uint8" if uint8_input else "float32", "output": "float32"})
    write_converted(converter, path)
    return details


def full_integer(converter, calib: CalibrationSet, calib_input: str, input_type=None, output_type=None):
    """Calibrated full-integer conversion (builtin INT8 ops only); ``input_type`` / ``output_type``
    (``tf.uint8``, ``tf.int8``) make the input / output tensors integer too (float by default)."""
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative(calib, calib_input)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if input_type is not None:
        converter.inference_input_type = input_type
    if output_type is not None:
        converter.inference_output_type = output_type
    return converter


def write_converted(converter, path: Path) -> None:
    # The converter saves a temporary SavedModel and prints its signature to stdout: keep stdout clean.
    with contextlib.redirect_stdout(io.StringIO()):
        flatbuffer = converter.convert()
    path.write_bytes(flatbuffer)


def named_output(model, output_name: str):
    """The same graph with its single output keyed ``output_name`` (the signature output key)."""
    import keras

    if isinstance(model.output, dict):
        return model
    return keras.Model(model.input, {output_name: model.output}, name=model.name)


def io_names(path: Path) -> dict[str, dict[str, str]]:
    """What a LiteRT client sees: the signature (``get_signature_runner(name)``), its input/output
    keys, and the tensor names ``get_input_details()``/``get_output_details()`` report."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    signatures = interpreter.get_signature_list()
    name = "serving_default" if "serving_default" in signatures else next(iter(signatures), None)
    keys = signatures.get(name, {}) if name else {}
    # Logits models also carry a `probabilities` output for TFLite Metadata clients: edgetl's is `logits`.
    chosen = {"input": (keys.get("inputs") or [None])[0],
              "output": "logits" if "logits" in (keys.get("outputs") or []) else (keys.get("outputs") or [None])[0]}
    tensors = {"input": interpreter.get_input_details()[0]["name"],
               "output": interpreter.get_output_details()[0]["name"]}
    if name and chosen["input"]:
        runner = interpreter.get_signature_runner(name)
        tensors = {"input": runner.get_input_details()[chosen["input"]]["name"],
                   "output": runner.get_output_details()[chosen["output"]]["name"]}
    return {side: {"name": chosen[side] or tensors[side], "signature": name, "signature_key": chosen[side],
                   "tensor_name": tensors[side]}
            for side in ("input", "output")}


def input_quantization(path: Path) -> dict[str, float] | None:
    """Scale and zero point of a quantized input tensor (None for float inputs)."""
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_path=str(path)).get_input_details()[0]
    scale, zero = detail["quantization"]
    if not np.issubdtype(detail["dtype"], np.integer) or not scale:
        return None
    return {"scale": float(scale), "zero_point": int(zero)}


def _representative(calib: CalibrationSet, calib_input: str, limit: int | None = None):
    def batches():
        for i, batch in enumerate(calib.batches(calib_input, chunk=1)):  # the converter wants batch 1
            if limit is not None and i >= limit:
                return
            yield [batch.astype(np.float32)]

    return batches


def _debugger(model, calib: CalibrationSet, calib_input: str, debug_images: int, float_nodes=None,
              float_ops=(), output_name: str = "logits"):
    import tensorflow as tf

    converter = converter_for(model, output_name)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative(calib, calib_input)
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(float_nodes or []),
                                                            denylisted_ops=list(float_ops) or None)
    return tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=_representative(calib, calib_input, debug_images), debug_options=options)


def rank_layers(model, calib: CalibrationSet, calib_input: str = "float32",
                debug_images: int = 32, output_name: str = "logits") -> list[tuple[str, float]]:
    """(output tensor name, RMSE / scale) of every quantized op, worst first: TFLite's
    QuantizationDebugger runs the quantized model with float references beside each op on
    ``debug_images`` calibration images; RMSE over the op's own quantization step is its own error
    (the measure TFLite's selective-quantization guide ranks by)."""
    import csv

    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints SavedModel signatures
        debugger = _debugger(model, calib, calib_input, debug_images, output_name=output_name)
        debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    dump.seek(0)
    scored = {}
    for row in csv.DictReader(dump):
        scale = float(row["scale"] or 0)
        scored[row["tensor_name"]] = float(row["mean_squared_error"]) ** 0.5 / scale if scale else 0.0
    return sorted(scored.items(), key=lambda item: item[1], reverse=True)


def _convert_selective(model, path: Path, calib: CalibrationSet, calib_input: str,
                       float_nodes: list[str], float_ops: tuple[str, ...] = (),
                       output_name: str = "logits") -> dict[str, Any]:
    with contextlib.redirect_stdout(io.StringIO()):
        flatbuffer = _debugger(model, calib, calib_input, 1, float_nodes, float_ops,
                               output_name).get_nondebug_quantized_model()
    path.write_bytes(flatbuffer)
    details = {"converter": f"QuantizationDebugger({CONVERTER})",
               "weights": "int8 per-channel", "activations": "int8 per-tensor, float in the float layers",
               "io": {"input": "float32", "output": "float32"}}
    return {**details, "float_ops": list(float_ops)} if float_ops else details


FLOAT_HEAD = ("FULLY_CONNECTED",)
FLOAT_HEAD_MAX_SHARE = 0.02  # of the model's weights: a few-class head (lite0 with 2 classes: 0.06%)


def dense_share(model) -> float:
    """The share of the model's weights in Dense layers (nested models included)."""
    import keras

    def dense_params(layer) -> int:
        if isinstance(layer, keras.layers.Dense):
            return layer.count_params()
        return sum(dense_params(inner) for inner in getattr(layer, "layers", []))

    total = model.count_params()
    return dense_params(model) / total if total else 0.0


class TfliteBackend(ExportBackend):
    """The LiteRT converter from the Keras graph for every mode (there is no intermediate to share)."""

    format = Format.TFLITE
    extension = ".tflite"
    methods = {Mode.FP16: "tflite float16 weights", Mode.DYNAMIC: "tflite dynamic range",
               Mode.INT8: "tflite full integer"}

    def _convert(self, job, path: Path, mode: str, input_dtype: str,
                 float_nodes: list[str] | None = None) -> dict[str, Any]:
        # Full-integer uint8 input: the converter makes the uint8 tensor itself from a float graph fed
        # 0..255 pixels (see keras_graph.pixel_input_model); other modes take the uint8+cast graph.
        int8_pixels = mode == Mode.INT8 and input_dtype == InputDtype.UINT8
        if int8_pixels:
            from ..keras_graph import pixel_input_model

            graph = job.cached(("keras", "pixels as float"), lambda: pixel_input_model(job.source, "float32"))
        else:
            graph = job.keras_graph(input_dtype)
        calib_input = "pixels_float" if int8_pixels else "float32"
        # The classifier head (FULLY_CONNECTED) in float, where the converter can (float input: the
        # QuantizationDebugger path) and it is small: its int8 output rounds the logits to 1/256 of
        # their range. lite0 zero-shot with bias correction 120 -> 121/121, but its 1000-class head is
        # 28% of the weights (5.3 -> 9.1 MB, over the 0.30x-of-FP32 size bound), so only small heads
        # (tools/RESULTS-accuracy.md, "A2. PTQ fixes"); a larger head becomes hybrid below.
        float_ops = (FLOAT_HEAD if mode == Mode.INT8 and not int8_pixels and job.config.bias_correction
                     and dense_share(graph) <= FLOAT_HEAD_MAX_SHARE else ())
        details = convert(graph, path, mode, job.calib, calib_input, uint8_input=int8_pixels,
                          float_nodes=float_nodes, output_name=job.source.output_kind, float_ops=float_ops)
        if mode == Mode.FP32 and input_dtype == InputDtype.FLOAT32 and not float_nodes:
            # The float reference bias correction needs is this very conversion: keep a copy (before
            # metadata is embedded) instead of converting the graph a second time.
            def keep():
                reference = job.work / "tflite_bias_reference_float32.tflite"
                shutil.copyfile(path, reference)
                return reference

            job.cached(("tflite float reference", "float32"), keep)
        if mode == Mode.INT8 and job.config.bias_correction:
            details["bias_correction"] = self.correct_biases(job, graph, path, calib_input)
            if not float_ops:
                # A head not kept float (a large one, or any behind a uint8 input) keeps its int8 weights
                # but computes in float (tflite_head): lite0 zero-shot 120 -> 121/121 at 5.3 MB, latency
                # unchanged (tools/RESULTS-accuracy.md, "A3").
                from .tflite_head import hybrid_head

                hybrid = hybrid_head(path)
                if hybrid["ops"]:
                    details.update(hybrid_ops=hybrid["ops"], activations="int8 per-tensor, float in the hybrid head")
        return details

    def correct_biases(self, job, graph, path: Path, calib_input: str) -> dict[str, Any]:
        """Bias correction (``tflite_bias``) against a float model of the same graph, made once per call.
        lite0 zero-shot (121 photos): cosine with FP32 0.9948 -> 0.9975, agreement 120/121 either way
        (tools/RESULTS-accuracy.md, "A2. PTQ fixes")."""
        from .tflite_bias import correct_biases

        def make():
            reference = job.work / f"tflite_bias_reference_{calib_input}.tflite"
            convert(graph, reference, Mode.FP32, output_name=job.source.output_kind)
            return reference

        reference = job.cached(("tflite float reference", calib_input), make)
        return correct_biases(path, reference, job.calib, calib_input)

    def convert(self, job, path: Path, mode: str, input_dtype: str) -> dict[str, Any]:
        return self._convert(job, path, mode, input_dtype)

    def quantize(self, job, path: Path, mode: str, input_dtype: str) -> dict[str, Any]:
        if mode == Mode.INT8 and job.config.qat_epochs:
            from ..qat_formats import qat_tflite

            return qat_tflite(job, path, input_dtype)
        return self._convert(job, path, mode, input_dtype)

    def make_accurate(self, job, path: Path, input_dtype: str, details: dict) -> tuple:
        """QuantizationDebugger ranking, then selective quantization with the worst ops in float; the
        debugger does not make uint8-input models, so those fall back to dynamic range."""
        from ..sensitivity import RANK_IMAGES, float_until_passing

        if input_dtype == InputDtype.UINT8:
            details = self._convert(job, path, Mode.DYNAMIC, input_dtype)
            parity, runtime = job.measure_parity(self, path, Mode.INT8, input_dtype)
            return (path, details, parity, runtime,
                    ["all activations (dynamic-range fallback: int8 weights, float activations)"])
        ranked = rank_layers(job.keras_graph(input_dtype), job.calib, "float32", RANK_IMAGES,
                             output_name=job.source.output_kind)
        return float_until_passing(
            job, self, input_dtype, path, details, ranked, "RMSE / scale of the op output (QuantizationDebugger)",
            lambda candidate, names: self._convert(job, candidate, Mode.INT8, input_dtype, float_nodes=names))

    def io_names(self, path: Path) -> dict[str, dict[str, str | None]]:
        return io_names(path)

    def input_quantization(self, path: Path, mode: str, input_dtype: str) -> dict[str, float] | None:
        if mode == Mode.INT8 and input_dtype == InputDtype.UINT8:
            return input_quantization(path)
        return None

    def embed(self, path: Path, described: dict[str, Any]) -> dict[str, Any]:
        from ..embedded_metadata import embed_tflite

        return embed_tflite(path, described)
