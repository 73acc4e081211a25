"""OpenVINO IR artifacts: ``openvino.convert_model`` straight from the Keras model, NNCF for INT8, and
``OpenvinoBackend``, the export backend that runs them for each mode.

NNCF quantizes the OpenVINO model (not an ONNX one: NNCF's ONNX output ran slowly in ORT here), with
``nncf.Dataset`` over the calibration chunks. NNCF's own bias correction is off by default: it ran
before pair bounding, for weights that never ship; edgetl's (``openvino_bias``) runs after it, on the
weights that do (lite0 zero-shot pair-safe 116 -> 121/121; NNCF's full BiasCorrection, minutes instead
of seconds, measured no better; tools/RESULTS-accuracy.md, "A2. PTQ fixes"). ``--no-bias-correction``
gives NNCF's fast one back.
Preset PERFORMANCE (symmetric int8 weights and activations) is NNCF's default for CNNs and what the
CPU plugin's VNNI/AVX2 kernels run fastest.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ...choices import Format, Mode
from ...errors import UsageError
from .. import pairs
from ..calibration import CalibrationSet, prepare_batch
from .base import ExportBackend


def convert(model, input_dtype: str, output_name: str, onnx_fallback: Path | None = None):
    """Keras model -> ov.Model with a dynamic batch and named output (``onnx_fallback``: an ONNX file
    of the same graph to read instead if the direct conversion fails)."""
    import openvino as ov

    height, width = model.inputs[0].shape[1:3]
    try:
        ov_model = ov.convert_model(model, input=[(-1, height, width, 3)])
        converter = "openvino.convert_model(keras)"
    except Exception:
        if onnx_fallback is None or not onnx_fallback.exists():
            raise
        ov_model = ov.convert_model(str(onnx_fallback))
        converter = "openvino.convert_model(onnx)"
    ov_model.inputs[0].get_tensor().set_names({"image"})
    ov_model.outputs[0].get_tensor().set_names({output_name})
    return ov_model, {"converter": converter}


def save(ov_model, path: Path, compress_to_fp16: bool = False) -> None:
    import openvino as ov

    ov.save_model(ov_model, str(path), compress_to_fp16=compress_to_fp16)


@contextlib.contextmanager
def nncf_output_on_stderr():
    """NNCF prints progress bars (rich, to sys.stdout) and INFO lines (its own stdout handler): keep the
    bars as progress but on stderr, so stdout carries only the export table; keep its warnings only."""
    from nncf.common.logging import nncf_logger

    level = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        nncf_logger.setLevel(level)


def _quantization_arguments(calib: CalibrationSet, calib_input: str, ignored: list[str] | None,
                            int8_weights: str, fixes=None):
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    # One image per item (NNCF's subset_size counts items), prepared lazily from the uint8 pixels.
    dataset = nncf.Dataset(range(len(calib)),
                           lambda i: prepare_batch(calib.pixels[i:i + 1], calib.recipe, calib_input))
    kwargs: dict[str, Any] = {}
    if ignored:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(ignored), validate=False)
    # On x86 without VNNI the CPU plugin's U8S8 kernels saturate in every layer and OpenVINO has no
    # exact-kernel switch (ORT does, see runtime.cpu). NNCF's overflow fix ("7-bit": all layers; its
    # default "full": the first only) halves the weight range; pair-safe weights (export.pairs) are
    # bounded instead, after quantization, so NNCF's own fix is off for them. efficientnet_lite0,
    # agreement with FP32 / accuracy: fine-tuned (49 val) pair-safe 1.000 / 0.959 (= FP32, cosine 0.997),
    # 7-bit 0.980 / 0.939 (cosine 0.991); zero-shot (121 photos) even: pair-safe 0.959-0.975, 7-bit
    # 0.967-0.975 depending on the calibration subset; first layer only 0.950, none 0.893.
    overflow_fix = {"full": OverflowFix.FIRST_LAYER, "pair-safe": OverflowFix.DISABLE,
                    "7-bit": OverflowFix.ENABLE}[int8_weights]
    ranges = {}
    if fixes and fixes.exact_target and int8_weights == "full":
        # A VNNI/ARM target accumulates without saturation, so the first layer keeps its 8 bits too:
        # lite0 zero-shot cosine with FP32 0.9940 -> 0.9968 (tools/RESULTS-accuracy.md, "A2. PTQ fixes").
        overflow_fix = OverflowFix.DISABLE
        if fixes.bias_correction:
            # Activation ranges from the calibration set's extremes (NNCF's default averages each image's
            # min/max, which clips the rare large values of the projections): lite0 zero-shot with full
            # weights 120 -> 121/121, cosine 0.9968 -> 0.9974; pair-safe weights measured 121 -> 120/121,
            # so only here (tools/RESULTS-accuracy.md, "A3").
            ranges = {"activations_range_estimator_params": RangeEstimatorParametersSet.MINMAX}
    # edgetl's bias correction (openvino_bias) replaces NNCF's fast one: it runs after pair bounding,
    # so it corrects the weights that ship (pair-safe 116 -> 121/121, full cosine 0.9927 -> 0.9940).
    corrected = bool(fixes and fixes.bias_correction)
    advanced = AdvancedQuantizationParameters(overflow_fix=overflow_fix, disable_bias_correction=corrected, **ranges)
    details = {"tool": "nncf.quantize", "nncf": nncf.__version__, "preset": "performance",
               "fast_bias_correction": not corrected, "subset_size": len(calib), "overflow_fix": overflow_fix.value,
               "int8_weights": int8_weights, "weights": "int8 per-channel symmetric",
               "activations": "int8/uint8 per-tensor"}
    if ranges:
        details["activation_range_estimator"] = "minmax (calibration extremes)"
    return dataset, kwargs, advanced, details


def quantize_int8(ov_model, calib: CalibrationSet, calib_input: str, ignored: list[str] | None = None,
                  int8_weights: str = "pair-safe", fixes=None):
    """``fixes``: ``openvino_bias.PtqFixes`` (bias correction, no overflow fix on VNNI/ARM targets)."""
    import nncf

    dataset, kwargs, advanced, details = _quantization_arguments(calib, calib_input, ignored, int8_weights, fixes)
    if fixes and fixes.bias_correction:
        from .openvino_bias import input_means

        fp32_model = ov_model.clone()  # NNCF may change the model it gets
        means = input_means(fp32_model, calib, calib_input)
    with nncf_output_on_stderr():
        quantized = nncf.quantize(ov_model, dataset, preset=nncf.QuantizationPreset.PERFORMANCE,
                                  subset_size=len(calib), fast_bias_correction=True,
                                  advanced_parameters=advanced, **kwargs)
    if int8_weights == "pair-safe":
        details["pair_safe"] = bound_weight_pairs(quantized)
    if fixes and fixes.bias_correction:
        from .openvino_bias import correct_biases, weight_deltas

        details["bias_correction"] = correct_biases(quantized, weight_deltas(quantized, fp32_model), means)
    return quantized, details


def bound_weight_pairs(ov_model) -> dict[str, Any]:
    """Make the int8 weights of Convolution/MatMul layers pair-safe (``export.pairs``), in place. NNCF
    leaves them as an int8 Constant -> Convert -> Multiply(per-channel scale) chain; both constants are
    replaced. Bias correction for the bounded weights comes after (``openvino_bias``)."""
    import openvino as ov
    from openvino import opset13

    growth = []
    for op in ov_model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in ("Convolution", "MatMul"):
            continue
        multiply = op.input_value(1).get_node()
        if multiply.get_type_name() != "Multiply":
            continue
        convert, scale_node = multiply.input_value(0).get_node(), multiply.input_value(1).get_node()
        if convert.get_type_name() != "Convert" or scale_node.get_type_name() != "Constant":
            continue
        constant = convert.input_value(0).get_node()
        if constant.get_type_name() != "Constant" or constant.get_output_element_type(0) != ov.Type.i8:
            continue
        layout = pairs.weight_layout(kind == "Convolution", bool(op.get_attributes().get("transpose_b", False)))
        q, scale = constant.get_data(), scale_node.get_data()
        try:
            new_q, new_scale = pairs.requantize(q.astype(np.float64) * scale, scale, layout)
        except ValueError:
            continue  # scales along another axis than the output channels: not NNCF's layout
        convert.input(0).replace_source_output(opset13.constant(new_q).output(0))
        multiply.input(1).replace_source_output(opset13.constant(new_scale).output(0))
        growth.append(pairs.scale_growth(scale, new_scale))
    return pairs.summary(growth)


def quantize_int8_accuracy_aware(ov_model, calib: CalibrationSet, calib_input: str, parity_inputs: np.ndarray,
                                 reference_top1: np.ndarray, min_agreement: float, int8_weights: str = "pair-safe",
                                 fixes=None):
    """``--accuracy-aware`` for OpenVINO: NNCF's own accuracy control (``quantize_with_accuracy_control``)
    ranks the quantized layers by how much reverting each one to float restores the metric, and reverts
    the fewest until it holds. The metric is top-1 agreement with the Keras FP32 model on the parity
    images (labels not needed), so ``max_drop = 1 - min_agreement``.

    NNCF measures its candidates on the exporting CPU as it goes. It searches with 7-bit weights (its
    overflow fix), which compute exactly on every CPU, so which layers it reverts cannot depend on the
    machine that exported; the artifact is then quantized with the target's weights (``int8_weights``)
    and those layers in float (pair-safe: or the searched 7-bit model, whichever agrees more on the parity
    images; ``int8_weights`` in the details says which), and the parity check measures that artifact."""
    import nncf

    dataset, kwargs, advanced, details = _quantization_arguments(calib, calib_input, None, "7-bit")
    validation = nncf.Dataset(list(zip(parity_inputs[:, None], reference_top1.tolist())), lambda item: item[0])

    def agreement(compiled, items) -> tuple[float, list[float]]:
        output = compiled.output(0)
        hits = [float(int(np.argmax(compiled(x)[output])) == reference) for x, reference in items]
        return float(np.mean(hits)), hits  # per-image values let NNCF rank layers without extra passes

    with nncf_output_on_stderr():
        searched = nncf.quantize_with_accuracy_control(
            ov_model.clone(), dataset, validation, agreement, max_drop=max(0.0, 1.0 - min_agreement),
            drop_type=nncf.DropType.ABSOLUTE, preset=nncf.QuantizationPreset.PERFORMANCE,
            subset_size=len(calib), fast_bias_correction=True, advanced_quantization_parameters=advanced,
            **kwargs)
    reverted = float_layer_names(searched)
    quantized = searched
    if int8_weights != "7-bit":
        target, target_details = quantize_int8(ov_model, calib, calib_input, reverted, int8_weights, fixes)
        # The reverted set does not always carry over (NNCF may also have reverted activation quantizers).
        # Pair-safe weights are exact on every CPU too, so keeping the better of the two is still the same
        # choice everywhere; full weights are only exact with VNNI, so for them the target is kept unmeasured.
        if int8_weights != "pair-safe" or (_agreement(target, parity_inputs, reference_top1)
                                           >= _agreement(searched, parity_inputs, reference_top1)):
            quantized, details = target, target_details
    details = {**details, "tool": "nncf.quantize_with_accuracy_control",
               "accuracy_control": {"metric": "top-1 agreement with Keras FP32", "images": int(len(parity_inputs)),
                                    "max_drop": round(max(0.0, 1.0 - min_agreement), 6),
                                    "searched_with": "7-bit", "reverted": len(reverted)}}
    return quantized, details


def _agreement(ov_model, inputs: np.ndarray, reference_top1: np.ndarray) -> float:
    import openvino as ov

    compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    top1 = [int(np.argmax(compiled(inputs[i:i + 1])[compiled.output(0)])) for i in range(len(inputs))]
    return float(np.mean(np.asarray(top1) == reference_top1))


def float_layer_names(ov_model) -> list[str]:
    """Convolution/MatMul layers whose weights are not quantized (accuracy control reverted them)."""
    return [op.get_friendly_name() for op in ov_model.get_ordered_ops()
            if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul")
            and not _quantized_weights(op.input_value(1).get_node())]


def _quantized_weights(node, depth: int = 6) -> bool:
    # Quantized weights reach a conv as Constant -> FakeQuantize (in memory) or as an integer Constant
    # -> Convert -> (Subtract) -> Multiply (saved IR); float ones as a float Constant (-> Reshape).
    # The weights are always input 0 of those nodes (scales, zero points and shapes come second).
    kind = node.get_type_name()
    if kind == "FakeQuantize":
        return True
    if kind == "Constant":
        return node.get_output_element_type(0).is_integral()
    if depth == 0 or node.get_input_size() == 0:
        return False
    return _quantized_weights(node.input_value(0).get_node(), depth - 1)


def compress_weights(ov_model):
    """``dynamic`` for OpenVINO: INT8 weights (NNCF weight compression), float activations."""
    import nncf

    try:
        with nncf_output_on_stderr():
            compressed = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    except Exception as exc:
        raise UsageError(f"nncf.compress_weights failed ({str(exc).splitlines()[0][:150]}); "
                         f"dynamic is supported by onnx and tflite") from None
    return compressed, {"tool": "nncf.compress_weights", "nncf": nncf.__version__, "weights": "int8 asymmetric",
                        "activations": "float"}


def layer_names(ov_model, types: tuple[str, ...] = ("Convolution", "GroupConvolution", "MatMul")) -> list[str]:
    return [op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() in types]


def io_names(path: Path) -> dict[str, dict[str, str]]:
    """The tensor names of the model's ports: ``compiled(...)["logits"]`` or ``{"image": x}``."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    names = {}
    for side, port in (("input", model.inputs[0]), ("output", model.outputs[0])):
        name = port.get_any_name()
        names[side] = {"name": name, "tensor_name": name}
    return names


class OpenvinoBackend(ExportBackend):
    """One FP32 IR per input dtype (straight from Keras), then fp16 compression or NNCF on it."""

    format = Format.OPENVINO
    extension = ".xml"
    methods = {Mode.FP16: "openvino compress_to_fp16", Mode.DYNAMIC: "nncf.compress_weights INT8",
               Mode.INT8: "nncf.quantize"}
    # OpenVINO has no exact-kernel switch like ORT's, so its weights are pair-safe for targets that may
    # lack VNNI (NNCF's own overflow fix, "7-bit", costs a whole bit).
    auto_int8_weights = "pair-safe"

    def fp32(self, job, input_dtype: str) -> tuple[Path, dict]:
        """The FP32 IR (saved once per export call and input dtype) and how it was converted."""
        def make():
            if job.source.source_kind == "onnx":  # straight from the given file (its own layout)
                import openvino as ov

                from ..sources.onnx_source import fp32_file

                model, details = ov.convert_model(str(fp32_file(job.source, job.work))), \
                    {"converter": "openvino.convert_model(onnx)"}
                model.outputs[0].get_tensor().set_names({job.source.output_kind})
            else:
                fallback = job.work / f"onnx_fp32_{input_dtype}.onnx"  # the ONNX backend's, if it ran first
                model, details = convert(job.keras_graph(input_dtype), input_dtype, job.source.output_kind, fallback)
            path = job.work / f"openvino_fp32_{input_dtype}.xml"
            save(model, path)
            return path, details

        return job.cached(("openvino", input_dtype), make)

    def read_fp32(self, job, input_dtype: str):
        """A fresh ov.Model of the FP32 IR (NNCF and fp16 compression change the model they get)."""
        import openvino as ov

        path, _ = self.fp32(job, input_dtype)
        return ov.Core().read_model(str(path))

    def convert(self, job, path: Path, mode: str, input_dtype: str) -> dict[str, Any]:
        _, details = self.fp32(job, input_dtype)
        fp16 = mode == Mode.FP16
        save(self.read_fp32(job, input_dtype), path, compress_to_fp16=fp16)
        return {**details, "weights": "float16 (compress_to_fp16)"} if fp16 else dict(details)

    def quantize(self, job, path: Path, mode: str, input_dtype: str) -> dict[str, Any]:
        _, details = self.fp32(job, input_dtype)
        if mode == Mode.INT8 and job.config.qat_epochs:
            from ..qat_formats import qat_openvino

            return {**details, **qat_openvino(job, path, input_dtype, job.int8_weights(self))}
        model = self.read_fp32(job, input_dtype)
        if mode == Mode.DYNAMIC:
            model, extra = compress_weights(model)
        else:
            from .openvino_bias import PtqFixes

            model, extra = quantize_int8(model, job.calib, job.calib_input(self, input_dtype), None,
                                         job.int8_weights(self), PtqFixes.for_job(job))
        save(model, path)
        return {**details, **extra}

    def make_accurate(self, job, path: Path, input_dtype: str, details: dict) -> tuple:
        """NNCF's own accuracy control (``quantize_int8_accuracy_aware``)."""
        from .openvino_bias import PtqFixes

        _, details = self.fp32(job, input_dtype)
        model, extra = quantize_int8_accuracy_aware(
            self.read_fp32(job, input_dtype), job.calib, input_dtype, job.model_inputs(input_dtype),
            job.reference.argmax(-1), job.config.min_agreement, job.int8_weights(self), PtqFixes.for_job(job))
        save(model, path)
        parity, runtime = job.measure_parity(self, path, Mode.INT8, input_dtype)
        return path, {**details, **extra}, parity, runtime, float_layer_names(model)

    def io_names(self, path: Path) -> dict[str, dict[str, str | None]]:
        return io_names(path)

    def embed(self, path: Path, described: dict[str, Any]) -> dict[str, Any]:
        from ..embedded_metadata import embed_openvino

        embed_openvino(path, described)
        return {}
