"""OpenVINO IR artifacts: ``openvino.convert_model`` straight from the Keras model, NNCF for INT8.

NNCF quantizes the OpenVINO model (not an ONNX one: NNCF's ONNX output ran slowly in ORT here), with
``nncf.Dataset`` over the calibration chunks. ``fast_bias_correction=True`` (NNCF's default) is kept:
it re-centres each quantized layer's output mean on the FP32 one and was what kept INT8 agreement with
FP32 at the level reported in the sidecars, for seconds of extra export time; the full
BiasCorrection runs the graph layer by layer and costs minutes for no measurable gain on these CNNs.
Preset PERFORMANCE (symmetric int8 weights and activations) is NNCF's default for CNNs and what the
CPU plugin's VNNI/AVX2 kernels run fastest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError
from .calibration import CalibrationSet, cpu_saturates_u8s8, prepare_batch


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


def quantize_int8(ov_model, calib: CalibrationSet, calib_input: str, ignored: list[str] | None = None):
    import nncf

    # One image per item (NNCF's subset_size counts items), prepared lazily from the uint8 pixels.
    dataset = nncf.Dataset(range(len(calib)),
                           lambda i: prepare_batch(calib.pixels[i:i + 1], calib.recipe, calib_input))
    kwargs: dict[str, Any] = {}
    if ignored:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(ignored), validate=False)
    # NNCF's default overflow fix covers the first layer only; on x86 without VNNI the U8S8 kernels
    # saturate everywhere (see calibration.cpu_saturates_u8s8), so then it applies to all layers.
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    overflow_fix = OverflowFix.ENABLE if cpu_saturates_u8s8() else OverflowFix.FIRST_LAYER
    kwargs["advanced_parameters"] = AdvancedQuantizationParameters(overflow_fix=overflow_fix)
    quantized = nncf.quantize(ov_model, dataset, preset=nncf.QuantizationPreset.PERFORMANCE,
                              subset_size=len(calib), fast_bias_correction=True, **kwargs)
    return quantized, {"tool": "nncf.quantize", "nncf": nncf.__version__, "preset": "performance",
                       "fast_bias_correction": True, "subset_size": len(calib),
                       "overflow_fix": overflow_fix.value,
                       "weights": "int8 per-channel symmetric", "activations": "int8/uint8 per-tensor"}


def compress_weights(ov_model):
    """``dynamic`` for OpenVINO: INT8 weights (NNCF weight compression), float activations."""
    import nncf

    try:
        compressed = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    except Exception as exc:
        raise UsageError(f"nncf.compress_weights failed ({str(exc).splitlines()[0][:150]}); "
                         f"dynamic is supported by onnx and tflite") from None
    return compressed, {"tool": "nncf.compress_weights", "nncf": nncf.__version__, "weights": "int8 asymmetric",
                        "activations": "float"}


def layer_names(ov_model, types: tuple[str, ...] = ("Convolution", "GroupConvolution", "MatMul")) -> list[str]:
    return [op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() in types]
