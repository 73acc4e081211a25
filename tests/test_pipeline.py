"""The newcomer's path: `edgetl run` on the embedded sample, and one real end-to-end run on the
real photos with the default backbone and its ImageNet weights."""

from __future__ import annotations

import json

import pytest

from edgetl.cli import main

FORMATS = ("onnx", "tflite", "openvino")


@pytest.mark.slow
def test_run_on_embedded_sample_then_reuse(sample_dir, tmp_path, capsys, monkeypatch):
    # The whole road at the smallest size it takes (what is checked is the road, not the model's accuracy):
    # mobilenet_v3_small at 32 px exports and benches every format x mode in a third of mobilenet_v2's time.
    # benchmark_app's column beside the bench is test_profile's; here it would add its own 2 s per IR row.
    monkeypatch.setattr("edgetl.profile.benchmark_app_path", lambda: None)
    out = tmp_path / "run"
    args = ["run", str(sample_dir), "--out", str(out), "--backbone", "mobilenet_v3_small", "--weights", "none",
            "--input-size", "32", "--epochs", "1", "--runs", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    # What run prints is the bench's own summary of bench.json: one table row per artifact, with its
    # format and quantization, then where the full report is.
    from edgetl.report import summary_markdown

    report = json.loads((out / "bench" / "bench.json").read_text())
    assert printed.strip().startswith(summary_markdown(report))
    assert f"full report: {out / 'bench' / 'report.md'}" in printed
    table = [line for line in printed.splitlines() if line.startswith("| model_")]
    for fmt, ext in zip(FORMATS, (".onnx", ".tflite", ".xml")):
        for mode in ("fp32", "int8"):
            prefix = f"| model_{fmt}_{mode}{ext} | {fmt} | {'none' if mode == 'fp32' else mode} |"
            assert sum(line.startswith(prefix) for line in table) == 1, (prefix, table)
    for fmt in FORMATS:
        for mode in ("fp32", "int8"):
            artifacts = [p for p in (out / "export").iterdir()
                         if p.suffix in (".onnx", ".tflite", ".xml") and f"{fmt}_{mode}" in p.name]
            assert artifacts, (fmt, mode)
            assert all((p.parent / (p.name + ".json")).exists() for p in artifacts)
    for name in ("bench.json", "report.md", "report.html"):
        assert (out / "bench" / name).exists()
    assert (out / "model" / "model.keras").exists()
    rows = json.loads((out / "bench" / "bench.json").read_text())["rows"]
    benched = {r["artifact"] for r in rows}
    assert {f"model_{fmt}_{mode}{ext}" for fmt, ext in zip(FORMATS, (".onnx", ".tflite", ".xml"))
            for mode in ("fp32", "int8")} <= benched
    from edgetl.profile import native_precision

    # the six artifacts, the Keras reference, and the FP32 IR at OpenVINO's own precision where it is bf16
    assert len(benched) == 7 + (native_precision() not in (None, "f32"))

    # Same inputs: every stage is reused, nothing is redone.
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("inputs unchanged") == 4


@pytest.mark.slow
def test_real_photos_default_backbone_end_to_end(shared_photos, tmp_path):
    """EfficientNet-Lite0 with its ImageNet weights on the real ant/bee photos: transfer reaches a
    high accuracy in a few epochs, and its INT8 ONNX artifact agrees with the FP32 model."""
    from edgetl.exporting import ExportConfig, export
    from edgetl.training import FinetuneConfig, finetune
    from edgetl.metadata import read_sidecar

    trained = finetune(FinetuneConfig(data=shared_photos, out=tmp_path / "model", epochs=3, verbose=False))
    assert trained.val_accuracy >= 0.90, trained.val_accuracy
    assert trained.metadata["dataset"]["skipped"] == [str(shared_photos / "ants" / "imageNotFound.gif")]

    export(ExportConfig(model=tmp_path / "model", out=tmp_path / "int8", formats=("onnx",),
                        modes=("int8",), calib=shared_photos, calib_size=100, min_agreement=0.9))
    artifact = next((tmp_path / "int8").glob("*.onnx"))
    parity = read_sidecar(artifact)["parity"]
    # 0.959 with the earlier 7-bit weights on this AVX2 (no VNNI) CPU; 8-bit weights on exact kernels
    # reached 1.000 on the 49 val photos of the full pipeline. This guards against regressions.
    assert parity["top1_agreement"] >= 0.95, parity
    assert parity["cosine"] >= 0.9, parity
