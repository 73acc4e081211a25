"""bench.json's artifact entries and flat rows (one per artifact x batch size, plus the reference), the
recommendation, bench.csv."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..metrics import file_sizes
from ..timing import TIMING_KEYS

if TYPE_CHECKING:
    from .config import Artifact

ROW_COLUMNS = ["artifact", "kind", "backbone", "format", "runtime", "quantization", "batch_size", "size_bytes",
               "gzip_bytes", "load_ms", "latency_min_ms", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms",
               "latency_mean_ms", "latency_std_ms", "throughput_ips", "peak_rss_mb", "top1", "top5",
               "agreement", "cosine_mean", "max_abs_diff", "speedup_vs_fp32", "size_ratio_vs_fp32",
               "cpu_fallback_nodes", "device", "latency_evidence", "accuracy_evidence", "precision",
               "benchmark_app_median_ms"]


def artifact_entry(artifact: Artifact, runtime: str, version: str, settings: dict[str, Any],
                   input_dtype: str) -> dict[str, Any]:
    """The head of an artifact's bench.json entry: what it is, what runs it and what it weighs."""
    return {"path": str(artifact.path), "name": artifact.name, "format": artifact.format, "runtime": runtime,
            "runtime_version": version, "runtime_settings": settings, "quantization": artifact.quantization,
            "input_dtype": input_dtype, "backbone": (artifact.sidecar.get("source_model") or {}).get("backbone"),
            "output_kind": artifact.output_kind, "labels": artifact.sidecar["labels"],
            "size": file_sizes(artifact.files), "files": [p.name for p in artifact.files]}


def artifact_row(entry: dict[str, Any], size: int) -> dict[str, Any]:
    """The columns of an artifact's row that every bench fills alike; the others start as None."""
    vs = entry["vs_reference"] or {}
    return {key: None for key in ROW_COLUMNS} | {
        "artifact": entry["name"], "kind": "artifact", "backbone": entry["backbone"], "format": entry["format"],
        "runtime": entry["runtime"], "quantization": entry["quantization"], "batch_size": size,
        "size_bytes": entry["size"]["bytes"], "gzip_bytes": entry["size"]["gzip_bytes"],
        "top1": entry["accuracy"]["top1"], "top5": entry["accuracy"]["top5"],
        "agreement": vs.get("top1_agreement"), "cosine_mean": vs.get("cosine_mean"),
        "max_abs_diff": vs.get("max_abs_diff"), "cpu_fallback_nodes": entry["placement"]["cpu_fallback_nodes"],
        "device": ",".join(entry["placement"]["devices"])}


def timing_columns(timing: dict[str, float], size: int) -> dict[str, float]:
    """One batch size's latency statistics as row columns, with the throughput they give."""
    return {**{f"latency_{k}_ms": timing[k] for k in TIMING_KEYS}, "throughput_ips": size * 1e3 / timing["mean"]}


def reference_rows(reference: dict[str, Any], batch_sizes: list[int]) -> list[dict[str, Any]]:
    """The reference's rows, one per batch size (``reference``: bench.json's reference block): Keras, or
    ONNX Runtime FP32 for an ``.onnx`` reference."""
    onnx = str(reference.get("path", "")).endswith(".onnx")
    fmt, runtime = ("onnx", "onnxruntime") if onnx else ("keras", "tensorflow")
    return [{key: None for key in ROW_COLUMNS} | {
        "artifact": f"reference ({fmt})", "kind": "reference", "backbone": reference.get("backbone"),
        "format": fmt, "runtime": runtime, "quantization": "none", "batch_size": size,
        **timing_columns(reference["latency_ms"][str(size)], size),
        "top1": reference["accuracy"]["top1"], "top5": reference["accuracy"]["top5"],
        "agreement": 1.0, "device": reference["device"],
        "latency_evidence": "measured", "accuracy_evidence": "measured"} for size in batch_sizes]


def build_rows(results: list[dict], reference: dict | None, batch_sizes: list[int]) -> list[dict[str, Any]]:
    """One flat row per artifact x batch size (+ the reference), every value a scalar (CSV-ready)."""
    rows = []
    for entry in results:
        for size in batch_sizes:
            timing = entry["latency_ms"][str(size)]
            if "skipped" in timing:
                continue
            rows.append(artifact_row(entry, size) | timing_columns(timing, size) | {
                "load_ms": entry["load_ms"], "peak_rss_mb": entry["memory"]["peak_rss_mb"],
                # every figure says how it was obtained (targets/bench.py adds simulated/estimated rows)
                "latency_evidence": "measured", "accuracy_evidence": "measured",
                "precision": entry.get("precision"),
                "benchmark_app_median_ms": (entry.get("benchmark_app") or {}).get("median_ms") if size == 1 else None,
            })
    # Ratios against the FP32 (quantization none) artifact of the same model, format and batch size.
    for row in rows:
        base = next((r for r in rows if r["format"] == row["format"] and r["quantization"] == "none"
                     and r["batch_size"] == row["batch_size"] and r["backbone"] == row["backbone"]), None)
        if base:
            row["speedup_vs_fp32"] = base["latency_p50_ms"] / row["latency_p50_ms"]
            row["size_ratio_vs_fp32"] = row["size_bytes"] / base["size_bytes"]
    if reference:
        rows += reference_rows(reference, batch_sizes)
    return [{key: row.get(key) for key in ROW_COLUMNS} for row in rows]


def recommend(rows: list[dict], reference_top1: float | None) -> dict[str, Any]:
    """Fastest artifact (p50 at the smallest batch benched) within 1 point of the reference top-1."""
    candidates = [r for r in rows if r["kind"] == "artifact"]
    if not candidates:
        return {"artifact": None, "text": "no artifact was timed"}
    smallest = min(r["batch_size"] for r in candidates)
    candidates = [r for r in candidates if r["batch_size"] == smallest]
    baseline = reference_top1 if reference_top1 is not None else max(r["top1"] for r in candidates)
    basis = "reference" if reference_top1 is not None else "best artifact (no reference)"
    eligible = [r for r in candidates if r["top1"] >= baseline - 0.01 - 1e-9]
    if not eligible:
        return {"artifact": None, "basis": basis, "batch_size": smallest,
                "text": f"no artifact within 1 point of {basis} accuracy ({baseline:.1%})"}
    best = min(eligible, key=lambda r: r["latency_p50_ms"])
    return {"artifact": best["artifact"], "basis": basis, "batch_size": smallest,
            "baseline_top1": baseline, "latency_p50_ms": best["latency_p50_ms"], "top1": best["top1"],
            "text": f"fastest artifact within 1 point of {basis} accuracy: {best['artifact']} "
                    f"({best['latency_p50_ms']:.2f} ms p50 at batch {smallest}, top-1 {best['top1']:.1%} "
                    f"vs {baseline:.1%})"}


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    Path(path).write_text(buffer.getvalue())
