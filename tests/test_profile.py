"""`edgetl bench --profile`: per-op profiles, OpenVINO FP32 at both precisions, benchmark_app beside
edgetl's timing, and the reports that show them (rendered HTML details, readable scatter labels)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgetl.cli import main
from edgetl.profile import KINDS, native_precision


@pytest.fixture(scope="module")
def profiled(exported_artifacts, sample_subset, tmp_path_factory) -> Path:
    artifacts, data = exported_artifacts, sample_subset(4)
    out = tmp_path_factory.mktemp("profile") / "report"
    assert main(["bench", str(artifacts), "--data", str(data), "--out", str(out), "--runs", "5", "--warmup", "1",
                 "--batch-sizes", "1", "--profile"]) == 0
    return out


def test_profile_in_bench_json(profiled):
    import jsonschema

    from edgetl.benchmark import bench_schema

    report = json.loads((profiled / "bench.json").read_text())
    jsonschema.validate(report, bench_schema())
    entries = {e["name"]: e for e in report["artifacts"]}
    for name in ("model_onnx_int8.onnx", "model_openvino_int8.xml", "model_openvino_fp32.xml"):
        profile = entries[name]["profile"]
        assert profile["available"] and profile["ops"] > 20, name
        shares = [profile["by_kind"][kind]["share"] for kind in KINDS]
        assert sum(shares) == pytest.approx(1.0)
        # EfficientNet-Lite0 is depthwise + pointwise convolutions: they take most of the time
        assert profile["by_kind"]["depthwise"]["share"] > 0.02 and profile["by_kind"]["pointwise"]["share"] > 0.2
        times = [op["ms"] for op in profile["top_ops"]]
        assert times == sorted(times, reverse=True) and times[0] <= profile["total_ms"]
    assert not entries["model_tflite_int8.tflite"]["profile"]["available"]
    assert "ai-edge-litert" in entries["model_tflite_int8.tflite"]["profile"]["reason"]


def test_openvino_fp32_at_both_precisions_with_benchmark_app(profiled):
    report = json.loads((profiled / "bench.json").read_text())
    rows = {r["artifact"]: r for r in report["rows"]}
    native = native_precision()
    assert rows["model_openvino_fp32.xml"]["precision"] == "f32"
    if native not in (None, "f32"):
        variant = rows[f"model_openvino_fp32.xml [{native}]"]
        assert variant["precision"] == "native" and variant["top1"] is not None
        assert variant["speedup_vs_fp32"] is not None  # against the f32 row of the same IR
    from edgetl.profile import benchmark_app_path

    if benchmark_app_path():
        for name, row in rows.items():
            if row["format"] == "openvino":
                assert row["benchmark_app_median_ms"] > 0, name
    markdown = (profiled / "report.md").read_text()
    assert "## Where the time goes (per-op profile)" in markdown and "benchmark_app p50 ms" in markdown


def test_html_details_are_rendered(profiled):
    page = (profiled / "report.html").read_text()
    details = page.split("<h2>Details</h2>", 1)[1]
    assert "<pre>" not in details and "<table>" in details and "<h2>" in details
    assert "| --- |" not in details and "|---|" not in details


def test_scatter_labels_do_not_overlap():
    from edgetl.report import headless_pyplot, place_labels

    plt = headless_pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    # Six artifacts with nearly the same latency and accuracy: a plain offset stacks their labels.
    points = [(10 + 0.05 * i, 0.95 + 0.001 * (i % 2), f"model_format{i}_int8.xml") for i in range(6)]
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    ax.margins(x=0.25, y=0.2)
    place_labels(fig, ax, points)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == 6
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (ax.texts[i].get_text(), ax.texts[j].get_text())
    plt.close(fig)
