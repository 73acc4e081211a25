"""bench.json's artifact entries and flat rows (one per artifact x batch size, plus the reference), the
recommendation, bench.csv.

The recommendation: among the artifacts at the smallest batch whose accuracy is not shown to be more
than 1 point below the reference's (the upper end of the 95% interval of their paired top-1 change is
>= -1 point; without a reference: within 1 point of the best artifact), take the fastest by p50 and
every one whose paired latency ratio with it has an interval covering 1 ("within noise" of it); the
pick is the smallest file of that group (then the most accurate), so a load swing that reorders
artifacts the rounds cannot tell apart does not change it."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..metrics import file_sizes
from ..timing import TIMING_KEYS
from .significance import accuracy_columns, latency_columns

if TYPE_CHECKING:
    from .config import Artifact

ROW_COLUMNS = ["artifact", "kind", "backbone", "format", "runtime", "quantization", "batch_size", "size_bytes",
               "gzip_bytes", "load_ms", "latency_min_ms", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms",
               "latency_mean_ms", "latency_std_ms", "throughput_ips", "peak_rss_mb", "top1", "top5",
               "agreement", "cosine_mean", "max_abs_diff", "speedup_vs_fp32", "size_ratio_vs_fp32",
               "cpu_fallback_nodes", "device", "latency_evidence", "accuracy_evidence", "precision",
               "benchmark_app_median_ms",
               # 95% intervals (bench.json schema edgetl.bench/2; edgetl.benchmark.significance)
               "speedup_vs_fp32_low", "speedup_vs_fp32_high", "speedup_vs_reference", "speedup_vs_reference_low",
               "speedup_vs_reference_high", "latency_vs_anchor", "latency_vs_anchor_low", "latency_vs_anchor_high",
               "top1_low", "top1_high", "top1_change_vs_reference", "top1_change_low", "top1_change_high",
               "flips_vs_reference", "mcnemar_p_vs_reference"]
ACCURACY_MARGIN = 0.01  # the recommendation's accuracy room below the reference (1 point)


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
        "top1_low": (reference["accuracy"].get("interval") or [None])[0],
        "top1_high": (reference["accuracy"].get("interval") or [None, None])[1],
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
            } | accuracy_columns(entry) | latency_columns(timing))
    # Size against the FP32 (quantization none) artifact of the same model, format and batch size; the
    # speed-up comes from the paired rounds (significance.latency_comparisons).
    for row in rows:
        base = next((r for r in rows if r["format"] == row["format"] and r["quantization"] == "none"
                     and r["batch_size"] == row["batch_size"] and r["backbone"] == row["backbone"]), None)
        if base:
            row["size_ratio_vs_fp32"] = row["size_bytes"] / base["size_bytes"]
    if reference:
        rows += reference_rows(reference, batch_sizes)
    return [{key: row.get(key) for key in ROW_COLUMNS} for row in rows]


def recommend(rows: list[dict], reference: dict | None, ratio) -> dict[str, Any]:
    """The pick described in the module docstring; ``ratio(candidate, fastest, batch)`` is
    ``significance.pairwise_speedup``'s paired latency ratio."""
    candidates = [r for r in rows if r["kind"] == "artifact" and r["latency_p50_ms"] is not None]
    if not candidates:
        return {"artifact": None, "text": "no artifact was timed"}
    smallest = min(r["batch_size"] for r in candidates)
    candidates = [r for r in candidates if r["batch_size"] == smallest]
    reference_top1 = reference["accuracy"]["top1"] if reference else None
    baseline = reference_top1 if reference_top1 is not None else max(r["top1"] for r in candidates)
    basis = "reference" if reference_top1 is not None else "best artifact (no reference)"

    def accurate_enough(row: dict) -> bool:
        if reference_top1 is not None and row["top1_change_high"] is not None:
            return row["top1_change_high"] >= -ACCURACY_MARGIN - 1e-9  # not shown to be more than 1 point worse
        return row["top1"] >= baseline - ACCURACY_MARGIN - 1e-9

    eligible = [r for r in candidates if accurate_enough(r)]
    rule = (f"top-1 not shown more than {ACCURACY_MARGIN:.0%} below the {basis} (95% interval of the paired "
            "change); fastest p50, then the smallest of those within noise of it (latency ratio interval covers 1)")
    if not eligible:
        return {"artifact": None, "basis": basis, "batch_size": smallest, "rule": rule,
                "text": f"no artifact within 1 point of {basis} accuracy ({baseline:.1%})"}
    fastest = min(eligible, key=lambda r: (r["latency_p50_ms"], r["artifact"]))
    ratios = {r["artifact"]: ratio(r["artifact"], fastest["artifact"], smallest) for r in eligible if r is not fastest}
    tied = [fastest] + [r for r in eligible if r is not fastest and (ratios[r["artifact"]] is None
                                                                     or not ratios[r["artifact"]]["separates"])]
    best = min(tied, key=lambda r: (r["size_bytes"] or 0, -r["top1"], r["artifact"]))
    text = (f"fastest artifact within 1 point of {basis} accuracy: {best['artifact']} "
            f"({best['latency_p50_ms']:.2f} ms p50 at batch {smallest}, top-1 {best['top1']:.1%}"
            + (f" [{best['top1_low']:.1%}, {best['top1_high']:.1%}]" if best["top1_low"] is not None else "")
            + f" vs {baseline:.1%})")
    if len(tied) > 1:
        others = [r for r in tied if r is not best]
        text += ("; within noise of it: " + ", ".join(_versus(r, best, ratio, smallest) for r in others)
                 + " (the smallest of these is picked)")
    else:
        separated = sorted((r for r in eligible if r is not best), key=lambda r: r["latency_p50_ms"])
        if separated:
            text += f"; next: {_versus(separated[0], best, ratio, smallest)}"
    return {"artifact": best["artifact"], "basis": basis, "batch_size": smallest, "rule": rule,
            "baseline_top1": baseline, "latency_p50_ms": best["latency_p50_ms"], "top1": best["top1"],
            "within_noise": [r["artifact"] for r in tied if r is not best], "text": text}


def _versus(row: dict, best: dict, ratio, batch_size: int) -> str:
    """"name 1.08x slower [1.02, 1.15]" from the paired rounds (or the p50 ratio when there are none)."""
    paired = ratio(row["artifact"], best["artifact"], batch_size)
    if paired is None:
        return f"{row['artifact']} {row['latency_p50_ms'] / best['latency_p50_ms']:.2f}x p50"
    return f"{row['artifact']} {paired['ratio']:.2f}x [{paired['low']:.2f}, {paired['high']:.2f}]"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    Path(path).write_text(buffer.getvalue())
