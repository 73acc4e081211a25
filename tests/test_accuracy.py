"""Issue 16, the last mile of accuracy: INT8 weights chosen for the target CPU, pruned models that
quantize, distillation. Real exports of the session's tiny model (EfficientNet-Lite0, 96 px)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from edgetl.errors import UsageError


def _sidecar(path: Path) -> dict:
    return json.loads(path.with_name(path.name + ".json").read_text())


def _patch_cpu_flags(monkeypatch, saturates: bool) -> None:
    """Pretend the exporting CPU has (or lacks) VNNI: only the flag reader is replaced."""
    import edgetl.runtime.backends as backends
    import edgetl.runtime.cpu as cpu

    monkeypatch.setattr(cpu, "int8_dot_saturates", lambda: saturates)
    monkeypatch.setattr(backends, "int8_dot_saturates", lambda: saturates)


def test_auto_int8_weights_follow_the_target_cpu(monkeypatch):
    from edgetl.export.pairs import resolve, target_cpu

    assert resolve("auto", "openvino") == "pair-safe"  # "any", the portable default
    assert [resolve("auto", "openvino", t) for t in ("vnni", "arm", "no-vnni")] == ["full", "full", "pair-safe"]
    assert {resolve("auto", "onnx", t) for t in ("any", "vnni", "arm", "no-vnni")} == {"full"}
    assert resolve("7-bit", "openvino", "vnni") == "7-bit" and resolve("auto", "tflite", "vnni") is None
    import platform

    if platform.machine().lower() in ("x86_64", "amd64"):
        _patch_cpu_flags(monkeypatch, True)
        assert target_cpu("this") == "no-vnni" and resolve("auto", "openvino", "this") == "pair-safe"
        _patch_cpu_flags(monkeypatch, False)
        assert target_cpu("this") == "vnni" and resolve("auto", "openvino", "this") == "full"


def test_unknown_target_cpu_is_a_usage_error(tiny_model_dir, tmp_path):
    from edgetl.export import ExportConfig

    with pytest.raises(UsageError, match="--target-cpu"):
        ExportConfig(model=tiny_model_dir, out=tmp_path / "x", target_cpu="avx9").validate()


def test_int8_artifacts_record_their_target_and_do_not_depend_on_the_exporting_cpu(
        tiny_model_dir, sample_dir, tmp_path, monkeypatch):
    """``--target-cpu vnni``: full 8-bit OpenVINO weights, the target in the sidecar, and the same
    artifacts whether the exporting CPU has VNNI or not (only the flag reader is pretended; the exports
    are real). Accuracy-aware OpenVINO, which once read the flags, is checked in test_export's
    accuracy-control test, where the flag reader raises."""
    from edgetl.export import ExportConfig, export

    digests = []
    for saturates in (True, False):
        _patch_cpu_flags(monkeypatch, saturates)
        out = tmp_path / f"saturates_{saturates}"
        result = export(ExportConfig(model=tiny_model_dir, out=out, formats=("openvino", "onnx"), modes=("int8",),
                                     calib=sample_dir, calib_size=16, check=sample_dir, min_agreement=0.9,
                                     target_cpu="vnni", verbose=False))
        details = _sidecar(result.get("openvino", "int8").path)["quantization"]["details"]
        assert details["target_cpu"] == "vnni" and details["int8_weights"] == "full" and "pair_safe" not in details
        assert details["overflow_fix"] != "enable" and result.get("openvino", "int8").parity["top1_agreement"] >= 0.9
        onnx_details = _sidecar(result.get("onnx", "int8").path)["quantization"]["details"]
        assert onnx_details["target_cpu"] == "vnni" and onnx_details["int8_weights"] == "full"
        digests.append(_content_digests(out))
    assert digests[0] == digests[1] and len(digests[0]) == 3


def _content_digests(out: Path) -> dict[str, str]:
    """What an artifact computes, without the names tf2onnx and OpenVINO number per process (two exports in
    one process differ only in those): OpenVINO's weights file and its graph with names blanked; ONNX's
    initializer values and operator sequence."""
    import re

    import onnx

    digests = {}
    for path in sorted(out.iterdir()):
        if path.suffix == ".bin":
            content = path.read_bytes()
        elif path.suffix == ".xml":
            content = re.sub(rb'(names?)="[^"]*"', rb'\1=""', path.read_bytes())
        elif path.suffix == ".onnx":
            model = onnx.load(str(path))
            content = b"".join([t.raw_data or onnx.numpy_helper.to_array(t).tobytes() for t in model.graph.initializer]
                               + [n.op_type.encode() for n in model.graph.node])
        else:
            continue
        digests[path.name] = hashlib.sha256(content).hexdigest()
    return digests
