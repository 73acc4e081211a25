"""Quantization-aware fine-tuning (``export -q int8 --qat-epochs N``): the learned ranges reach every
format and the kept epoch is the best on held-out calibration images. Real exports of the session's
tiny model (EfficientNet-Lite0, 96 px). Whether QAT beats PTQ is measured on lite0 at 224 px
(tools/RESULTS-accuracy.md "D. QAT"): on this tiny model and 20 calibration photos it does not."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from edgetl.errors import UsageError


def _sidecar(path: Path) -> dict:
    return json.loads(path.with_name(path.name + ".json").read_text())


def _matches(learned: list[float], found: list[float]) -> int:
    found = np.asarray(sorted(found))
    return sum(bool(np.any(np.isclose(found, s, rtol=1e-5, atol=0))) for s in learned)


def test_qat_carries_learned_ranges_into_every_format(tiny_model_dir, sample_dir, sample_subset, tmp_path):
    import onnx
    from ai_edge_litert.interpreter import Interpreter
    from onnx import numpy_helper

    from edgetl.exporting import ExportConfig, export

    calib = sample_subset(10)
    common = dict(model=tiny_model_dir, modes=("int8",), calib=calib, check=sample_dir, min_agreement=0.01,
                  verbose=False)
    qat = export(ExportConfig(out=tmp_path / "qat", formats=("onnx", "tflite", "openvino"), qat_epochs=2, **common))
    by_format = {a.format: a for a in qat.artifacts}
    details = _sidecar(by_format["onnx"].path)["quantization"]["details"]
    block = details["qat"]
    assert block["epochs"] == 2 and "KL" in block["loss"] and block["bn_folded"] > 40
    ranges = block["activation_ranges"]
    learned = [(high - low) / 255 for low, high in ranges.values()]
    assert len(learned) == block["activation_quantizers"] > 40
    assert block["carried"]["activation_ranges"] == len(learned)

    # ONNX: the QDQ activation scales (uint8) are the learned ranges.
    model = onnx.load(str(by_format["onnx"].path))
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    onnx_scales = [float(constants[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"
                   and constants[n.input[2]].dtype == np.uint8]
    assert _matches(learned, onnx_scales) == len(learned)

    # TFLite: the converter took the fake-quant ranges as the int8 tensors' scales.
    interpreter = Interpreter(model_path=str(by_format["tflite"].path))
    tflite_scales = [float(t["quantization"][0]) for t in interpreter.get_tensor_details()
                     if t["dtype"] == np.int8 and len(t["quantization_parameters"]["scales"]) == 1]
    assert _matches(learned, tflite_scales) >= len(learned) - 2  # the converter may requantize an output

    # OpenVINO: the ranges stay as FakeQuantize ops (NNCF did not recalibrate).
    xml = by_format["openvino"].path.read_text()
    assert len(re.findall(r'type="FakeQuantize"', xml)) >= len(learned)
    openvino = _sidecar(by_format["openvino"].path)["quantization"]
    assert openvino["details"]["converter"].startswith("openvino.convert_model") and "no NNCF" in openvino["method"]

    # The kept epoch is the one with the lowest held-out distillation loss (epoch 0: PTQ's ranges, untrained).
    held = block["distillation_loss"]["held_out_per_epoch"]
    assert len(held) == 3 and block["kept_epoch"] == int(np.argmin(held))

    # Wrong ranges (or weights) carried would wreck the outputs; QAT's own cost on this tiny model is
    # a photo or two of 60.
    for artifact in qat.artifacts:
        assert artifact.sidecar["parity"]["top1_agreement"] >= 0.9 and artifact.sidecar["parity"]["cosine"] > 0.95


def test_qat_needs_int8_and_float_input(tiny_model_dir, sample_dir, tmp_path):
    from edgetl.exporting import ExportConfig

    with pytest.raises(UsageError, match="-q int8"):
        ExportConfig(model=tiny_model_dir, out=tmp_path / "a", qat_epochs=1).validate()
    with pytest.raises(UsageError, match="uint8"):
        ExportConfig(model=tiny_model_dir, out=tmp_path / "b", modes=("int8",), calib=sample_dir,
                     input_dtypes=("uint8",), qat_epochs=1).validate()
