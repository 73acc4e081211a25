"""Result tables: each column's header and number format, as Markdown or HTML."""

from __future__ import annotations

import html
from typing import Any, Sequence

# column -> (header, format). Unknown columns print as str().
COLUMNS: dict[str, tuple[str, str]] = {
    "artifact": ("artifact", "{}"),
    "format": ("format", "{}"),
    "runtime": ("runtime", "{}"),
    "quantization": ("quant", "{}"),
    "batch_size": ("batch", "{}"),
    "size_bytes": ("size", "bytes"),
    "gzip_bytes": ("gzip", "bytes"),
    "load_ms": ("load ms", "{:.1f}"),
    "latency_p50_ms": ("p50 ms", "{:.2f}"),
    "latency_p90_ms": ("p90 ms", "{:.2f}"),
    "latency_p99_ms": ("p99 ms", "{:.2f}"),
    "latency_mean_ms": ("mean ms", "{:.2f}"),
    "throughput_ips": ("img/s", "{:.1f}"),
    "peak_rss_mb": ("peak RSS MB", "{:.0f}"),
    "top1": ("top-1", "{:.1%}"),
    "top5": ("top-5", "{:.1%}"),
    "agreement": ("agree vs ref", "{:.1%}"),
    "cosine_mean": ("cosine", "{:.5f}"),
    "max_abs_diff": ("max |diff|", "{:.2e}"),
    "speedup_vs_fp32": ("speed vs FP32", "{:.2f}x"),
    "size_ratio_vs_fp32": ("size vs FP32", "{:.2f}x"),
    "sparsity": ("sparsity", "{:.0%}"),
    "device": ("device", "{}"),
    "precision": ("precision", "{}"),
    "benchmark_app_median_ms": ("benchmark_app p50 ms", "{:.2f}"),
    # figures with their 95% interval, as text (``with_intervals``)
    "top1_ci": ("top-1 [95% CI]", "{}"),
    "speedup_vs_fp32_ci": ("speed vs FP32 [95% CI]", "{}"),
    "speedup_vs_reference_ci": ("speed vs Keras [95% CI]", "{}"),
    "latency_vs_anchor_ci": ("latency vs anchor [95% CI]", "{}"),
    "drop_ci": ("drop vs baseline [95% CI]", "{}"),
    "change_vs_reference": ("top-1 change vs ref [95% CI]; flips, McNemar p", "{}"),
}

ARTIFACT_COLUMNS = ["batch_size", "latency_p50_ms", "latency_p90_ms", "throughput_ips", "top1_ci", "agreement",
                    "speedup_vs_fp32_ci", "speedup_vs_reference_ci", "size_ratio_vs_fp32"]
SUMMARY_COLUMNS = ["artifact", "format", "quantization", "size_bytes", "batch_size", "latency_p50_ms",
                   "latency_p90_ms", "throughput_ips", "top1_ci", "change_vs_reference", "agreement",
                   "speedup_vs_fp32_ci"]


def _ratio_text(row: dict[str, Any], column: str) -> str | None:
    value, low, high = row.get(column), row.get(f"{column}_low"), row.get(f"{column}_high")
    if value is None:
        return None
    return f"{value:.2f}x" + (f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else "")


def with_intervals(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows plus the ``*_ci`` text columns: each figure beside its 95% interval (bench.json keeps the
    numbers; edgetl.benchmark.significance says how they are computed)."""
    out = []
    for row in rows:
        extra = {f"{c}_ci": _ratio_text(row, c) for c in ("speedup_vs_fp32", "speedup_vs_reference",
                                                            "latency_vs_anchor")}
        if row.get("top1") is not None:
            extra["top1_ci"] = f"{row['top1']:.1%}" + (f" [{row['top1_low']:.1%}, {row['top1_high']:.1%}]"
                                                        if row.get("top1_low") is not None else "")
        if row.get("top1_change_vs_reference") is not None:
            flips = row["flips_vs_reference"]
            extra["change_vs_reference"] = (f"{row['top1_change_vs_reference'] * 100:+.1f} pts "
                                            f"[{row['top1_change_low'] * 100:+.1f}, {row['top1_change_high'] * 100:+.1f}]; "
                                            f"{flips} flip{'s' if flips != 1 else ''}, p={row['mcnemar_p_vs_reference']:.2f}")
        out.append({**row, **extra})
    return out


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_value(column: str, value: Any) -> str:
    if value is None:
        return "–"
    fmt = COLUMNS.get(column, (column, "{}"))[1]
    if fmt == "bytes":
        return human_bytes(value)
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    header = [COLUMNS.get(c, (c, ""))[0] for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_value(c, row.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines)


def html_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(COLUMNS.get(c, (c, ''))[0])}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_value(c, r.get(c)))}</td>" for c in columns)
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def summary_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The summary table's columns; benchmark_app's median sits beside edgetl's p50 when it ran."""
    columns = list(SUMMARY_COLUMNS)
    if any(r.get("latency_vs_anchor") is not None for r in rows):
        columns.append("latency_vs_anchor_ci")
    if any(r.get("benchmark_app_median_ms") is not None for r in rows):
        columns.insert(columns.index("latency_p50_ms") + 1, "benchmark_app_median_ms")
    return columns
