"""Markdown and self-contained HTML reports from flat result rows (bench, and prune's ``--sweep``).

Reusable pieces:

* ``markdown_table(rows, columns)`` – a Markdown table with the column formats below;
* ``scatter_png(rows, x, y, label)`` – base64 PNG of one metric against another, labelled points;
* ``curve_report(rows, columns, x, y, title)`` – table + scatter as ``{"markdown", "html"}`` (what
  prune's sweep renders for its accuracy / latency / size curve);
* ``render_markdown(bench_json)`` / ``render_html(bench_json)`` – the bench report.

Plots use matplotlib's Agg backend and are embedded as ``data:image/png;base64`` so the HTML file is
one self-contained document.
"""

from __future__ import annotations

import base64
import html
import io
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
}

ARTIFACT_COLUMNS = ["batch_size", "latency_p50_ms", "latency_p90_ms", "throughput_ips", "top1", "agreement",
                    "speedup_vs_fp32", "size_ratio_vs_fp32"]
SUMMARY_COLUMNS = ["artifact", "format", "quantization", "size_bytes", "batch_size", "latency_p50_ms",
                   "latency_p90_ms", "throughput_ips", "top1", "agreement", "speedup_vs_fp32"]


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


# -- plots -------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def scatter_png(rows: Sequence[dict[str, Any]], x: str, y: str, label: str = "artifact",
                title: str | None = None, log_x: bool = False) -> str:
    """Labelled scatter of ``y`` against ``x`` (rows lacking either are left out); base64 PNG. Labels
    are placed so they overlap neither each other nor the points (``_place_labels``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    points = [r for r in rows if r.get(x) is not None and r.get(y) is not None]
    colors = []
    for row in points:
        marker = "*" if row.get("kind") == "reference" else "o"
        colors.append(ax.scatter(row[x], row[y], s=80 if marker == "*" else 40, marker=marker).get_facecolor()[0])
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(COLUMNS.get(x, (x, ""))[0])
    ax.set_ylabel(COLUMNS.get(y, (y, ""))[0])
    ax.set_title(title or f"{COLUMNS.get(y, (y, ''))[0]} vs {COLUMNS.get(x, (x, ''))[0]}")
    ax.grid(alpha=0.3)
    if points:
        ax.margins(x=0.25, y=0.2)  # room for labels beside the outermost points
        _place_labels(fig, ax, [(r[x], r[y], str(r.get(label, ""))) for r in points], colors=colors)
    return _png(fig)


# Candidate label offsets in points from the point, nearest first (then further out, with a leader line).
_OFFSETS = [(6, 5), (6, -13), (-6, 5), (-6, -13), (0, 14), (0, -22)]
_OFFSETS += [(dx * k, dy * k) for k in (2, 3, 4) for dx, dy in _OFFSETS]


def _place_labels(fig, ax, points: list[tuple[float, float, str]], fontsize: int = 8, colors=None) -> None:
    """Greedy placement: each label (points in order of x) takes the first candidate offset whose box
    overlaps no box placed so far and no marker; labels moved away from their point get a thin leader,
    and each label has its point's colour, so crowded points stay readable."""
    fig.canvas.draw()  # fixes limits and transforms
    to_pixels = ax.transData.transform
    scale = fig.dpi / 72.0
    char_w, height = 0.6 * fontsize * scale, 1.3 * fontsize * scale
    markers = [to_pixels((px, py)) for px, py, _ in points]
    taken = [(mx - 5, my - 5, mx + 5, my + 5) for mx, my in markers]

    def overlaps(box):
        return any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in taken)

    order = sorted(range(len(points)), key=lambda i: (markers[i][0], -markers[i][1]))
    for i in order:
        px, py, text = points[i]
        mx, my = markers[i]
        width = char_w * len(text)
        chosen = _OFFSETS[-1]
        for dx, dy in _OFFSETS:
            left = mx + dx * scale if dx >= 0 else mx + dx * scale - width
            if dx == 0:
                left = mx - width / 2
            bottom = my + dy * scale
            box = (left, bottom, left + width, bottom + height)
            if not overlaps(box):
                chosen = (dx, dy)
                break
        dx, dy = chosen
        left = mx + dx * scale if dx >= 0 else mx + dx * scale - width
        if dx == 0:
            left = mx - width / 2
        taken.append((left, my + dy * scale, left + width, my + dy * scale + height))
        far = abs(dx) > 8 or dy > 8 or dy < -16
        color = colors[i] if colors is not None else "black"
        ax.annotate(text, (px, py), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize, color=color,
                    ha="center" if dx == 0 else ("left" if dx > 0 else "right"), va="bottom",
                    arrowprops={"arrowstyle": "-", "lw": 0.6, "color": color} if far or dx < 0 or dy < 0 else None)


def boxplot_png(series: dict[str, Sequence[float]], title: str, ylabel: str = "latency (ms)") -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(series)), 4.5))
    ax.boxplot(list(series.values()), showfliers=True)
    ax.set_xticks(range(1, len(series) + 1), list(series.keys()), rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def confusion_png(matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str) -> str:
    plt = _pyplot()
    n = len(labels)
    size = min(2.5 + 0.45 * n, 12)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        peak = max(max(r) for r in matrix) or 1
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=8,
                        color="white" if matrix[i][j] > peak / 2 else "black")
    ax.set_title(title)
    return _png(fig)


def img(png_base64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png_base64}">'


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px;"
         "text-align:right;font-size:13px}th{background:#f3f3f3}td:first-child{text-align:left}"
         "img{max-width:100%}code{background:#f3f3f3;padding:1px 4px}.rec{font-weight:bold;margin:1em 0}")


def html_page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def curve_report(rows: Sequence[dict[str, Any]], columns: Sequence[str], x: str = "latency_p50_ms",
                 y: str = "top1", title: str = "accuracy vs latency", label: str = "artifact") -> dict[str, str]:
    """Table + labelled scatter from flat rows: ``{"markdown": ..., "html": ...}`` (prune's sweep
    passes e.g. x="size_bytes" or x="sparsity")."""
    plot = scatter_png(rows, x, y, label, title)
    return {"markdown": f"### {title}\n\n{markdown_table(rows, columns)}\n",
            "html": f"<h2>{html.escape(title)}</h2>{html_table(rows, columns)}{img(plot, title)}"}


# -- the bench report --------------------------------------------------------------------------------
def _machine_line(machine: dict[str, Any]) -> str:
    isa = ", ".join(k for k, v in machine.get("isa", {}).items() if v) or "none of the INT8 extensions"
    load = machine.get("load_average_1m")
    return (f"{machine['cpu_model']} ({machine['architecture']}, {machine['usable_cpus']}/"
            f"{machine['logical_cpus']} CPUs usable, {machine.get('memory_gib')} GiB); ISA: {isa}"
            + (f"; load average {load} at start" if load is not None else ""))


def _rss(memory: dict[str, Any]) -> str:
    text = f"{memory['peak_rss_mb']:.0f} MB"
    if memory.get("rss_before_mb") is not None:
        text += f" (+{memory['peak_rss_mb'] - memory['rss_before_mb']:.0f} MB for this artifact)"
    return text


def render_markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    settings = report["settings"]
    reference = report.get("reference")
    lines = [f"# edgetl bench: target {report['target']}", ""]
    lines.append(f"- machine: {_machine_line(report['machine'])}")
    lines.append("- evidence: every figure below is **measured** on this machine (simulated/estimated NPU "
                 "figures come from `edgetl bench --target npu:... --simulate`)")
    threads = settings["threads"]["requested"]
    lines.append(f"- runs: {settings['runs']} timed after {settings['warmup']} warm-up, batch sizes "
                 f"{', '.join(map(str, settings['batch_sizes']))}, threads: {threads or 'runtime default'}")
    data = report["data"]
    lines.append(f"- data: {data['n_images']} images, {len(data['classes'])} classes ({data['root']})")
    if reference:
        ref_rows = [r for r in rows if r["kind"] == "reference"]
        p50 = ", ".join(f"b{r['batch_size']} {r['latency_p50_ms']:.2f} ms" for r in ref_rows)
        lines.append(f"- reference: Keras FP32 on {reference['device']}: top-1 {reference['accuracy']['top1']:.1%}, "
                     f"top-{reference['accuracy']['top5_k']} {reference['accuracy']['top5']:.1%}; p50 {p50}")
    else:
        lines.append("- reference: none (no --reference and no source model recorded in the sidecars)")
    overhead = report.get("harness_overhead")
    if overhead:
        verdict = "within" if overhead["within_target"] else "ABOVE"
        lines.append(f"- harness overhead: {overhead['overhead_pct']:+.2f}% timing loop vs bare `run()` loop ({verdict} the "
                     f"{overhead['target_pct']:.0f}% target; {overhead['artifact']}, batch {overhead['batch_size']}, "
                     f"best of {overhead['rounds']}x{overhead['runs']}); bookkeeping outside the timed calls "
                     f"{overhead['bookkeeping_pct']:.3f}%")
    for prep in report.get("preprocessing", []):
        size = "x".join(map(str, prep["recipe"]["input_size"]))
        decode, normalize = prep.get("decode_resize_crop_ms_per_image", 0), prep.get("normalize_ms_per_image", 0)
        lines.append(f"- preprocessing {size}: decode+resize+crop {decode:.2f} ms/img, normalize "
                     f"{normalize:.3f} ms/img (host side, not in the latencies below)")
    lines.append("")
    for entry in report["artifacts"]:
        mine = [r for r in rows if r["artifact"] == entry["name"] and r["kind"] == "artifact"]
        size = entry["size"]
        placement = entry["placement"]
        nodes = ", ".join(f"{k}: {v}" for k, v in placement["nodes"].items()) or "n/a"
        lines.append(f"## {entry['name']}")
        lines.append("")
        text = (f"{entry['format']} ({entry['runtime']} {entry['runtime_version']}), quantization "
                f"{entry['quantization']}, input {entry['input_dtype']}, size {human_bytes(size['bytes'])} "
                f"(gzip {human_bytes(size['gzip_bytes'])}), load {entry['load_ms']:.0f} ms, peak RSS "
                f"{_rss(entry['memory'])}; placement: {', '.join(placement['devices'])} "
                f"(nodes {nodes})")
        vs = entry.get("vs_reference")
        if vs:
            text += (f"; vs reference ({vs['space']}): cosine {format_value('cosine_mean', vs['cosine_mean'])}, "
                     f"max |diff| {format_value('max_abs_diff', vs['max_abs_diff'])}")
        if entry["accuracy"].get("non_finite_outputs"):
            text += f"; **{entry['accuracy']['non_finite_outputs']} NaN/inf outputs**"
        if placement.get("cpu_fallback_nodes"):
            text += f"; **CPU fallback: {placement['cpu_fallback_nodes']} nodes**"
        lines.append(text + ".")
        lines.append("")
        lines.append(markdown_table(mine, ARTIFACT_COLUMNS))
        lines.append("")
        lines += _extra_artifact_lines(entry, mine)
    failed = report.get("failed") or []
    if failed:
        lines.append("## Not benched")
        lines.append("")
        lines += [f"- **{f['name']}** ({f['format']}): FAILED: {f['reason']}" for f in failed]
        lines.append("")
    lines += profile_summary_lines(report)
    lines.append("## Summary")
    lines.append("")
    lines.append(markdown_table(rows, summary_columns(rows)))
    lines.append("")
    lines.append(f"**{report['recommendation']['text']}**")
    lines.append("")
    return "\n".join(lines)


def summary_markdown(report: dict[str, Any]) -> str:
    """The summary table and the recommendation: what `edgetl run` prints (the full report is a file)."""
    return "\n".join([markdown_table(report["rows"], summary_columns(report["rows"])), "",
                      f"**{report['recommendation']['text']}**"])


def summary_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The summary table's columns; benchmark_app's median sits beside edgetl's p50 when it ran."""
    columns = list(SUMMARY_COLUMNS)
    if any(r.get("benchmark_app_median_ms") is not None for r in rows):
        columns.insert(columns.index("latency_p50_ms") + 1, "benchmark_app_median_ms")
    return columns


def _extra_artifact_lines(entry: dict[str, Any], mine: list[dict[str, Any]]) -> list[str]:
    """Precision, benchmark_app and the per-op profile of one artifact (Markdown lines)."""
    lines = []
    if entry.get("precision"):
        lines.append(f"- OpenVINO inference precision: {entry['precision']}"
                     + (" (the CPU plugin's default)" if entry["precision"] == "native" else " (forced)"))
    tool = entry.get("benchmark_app")
    if tool and tool.get("available"):
        p50 = next((r["latency_p50_ms"] for r in mine if r["batch_size"] == 1), None)
        beside = f" (edgetl p50 at batch 1: {p50:.2f} ms)" if p50 is not None else ""
        lines.append(f"- benchmark_app median: {tool['median_ms']:.2f} ms{beside}; `{tool['command']}`")
    elif tool:
        lines.append(f"- benchmark_app: {tool.get('reason')}")
    profile = entry.get("profile")
    if profile and profile.get("available"):
        shares = ", ".join(f"{kind} {v['share']:.0%}" for kind, v in profile["by_kind"].items())
        lines.append(f"- profile ({profile['method']}, batch {profile['batch_size']}, {profile['runs']} runs): "
                     f"{profile['total_ms']:.2f} ms over {profile['ops']} ops; {shares}")
        lines.append("")
        lines.append("| op | type | kind | ms | share |")
        lines.append("|---|---|---|---|---|")
        for op in profile["top_ops"]:
            lines.append(f"| {op['name'].replace('|', '/')} | {op['type']} | {op['kind']} | {op['ms']:.3f} | "
                         f"{op['share']:.1%} |")
    elif profile:
        lines.append(f"- profile: not available ({profile.get('reason')})")
    return lines + ([""] if lines else [])


def profile_summary_lines(report: dict[str, Any]) -> list[str]:
    """One table over the artifacts: where the time goes by op kind, and the costliest op."""
    profiled = [e for e in report["artifacts"] if (e.get("profile") or {}).get("available")]
    missing = [e["name"] for e in report["artifacts"] if e.get("profile") and not e["profile"].get("available")]
    if not profiled and not missing:
        return []
    lines = ["## Where the time goes (per-op profile)", "",
             "| artifact | profiled ms | depthwise | pointwise | other | costliest op |", "|---|---|---|---|---|---|"]
    for entry in profiled:
        profile = entry["profile"]
        top = profile["top_ops"][0] if profile["top_ops"] else None
        kinds = " | ".join(f"{profile['by_kind'][k]['share']:.0%}" for k in ("depthwise", "pointwise", "other"))
        lines.append(f"| {entry['name']} | {profile['total_ms']:.2f} | {kinds} | "
                     + (f"{top['type']} {top['kind']} {top['share']:.0%} |" if top else "– |"))
    if missing:
        reason = next(e["profile"].get("reason") for e in report["artifacts"] if e["name"] == missing[0])
        lines += ["", f"Not profiled: {', '.join(missing)} ({reason})."]
    return lines + [""]


def markdown_to_html(text: str) -> str:
    """The Markdown ``render_markdown`` writes (headings, bullet lists, pipe tables, paragraphs, bold,
    inline code) as HTML, for the HTML report's details."""
    import re

    def inline(line: str) -> str:
        line = html.escape(line)
        line = re.sub(r"`([^`]+)`", r"<code>\1</code>", line)
        return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", line)

    def cells(line: str) -> list[str]:
        return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]

    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 6)  # the page's <h1> is the title
            out.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            head, body = cells(block[0]), [cells(b) for b in block[2:]]
            out.append("<table><thead><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in body)
                       + "</tbody></table>")
            continue
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
        i += 1
    return "\n".join(out)


def render_html(report: dict[str, Any]) -> str:
    rows = report["rows"]
    smallest = min((r["batch_size"] for r in rows), default=1)
    at_smallest = [r for r in rows if r["batch_size"] == smallest]
    failed = "".join(f"<p><b>{html.escape(f['name'])}</b> ({html.escape(f['format'])}): FAILED: "
                     f"{html.escape(f['reason'])}</p>" for f in report.get("failed") or [])
    parts = [failed + f"<p class=\"rec\">{html.escape(report['recommendation']['text'])}</p>",
             f"<p>machine: {html.escape(_machine_line(report['machine']))}</p>",
             "<h2>Summary</h2>", html_table(rows, summary_columns(rows))]
    parts.append(img(scatter_png(at_smallest, "latency_p50_ms", "top1",
                                 title=f"top-1 vs p50 latency (batch {smallest})"), "latency vs accuracy"))
    series = {f"{e['name']} b{b}": t["times_ms"] for e in report["artifacts"]
              for b, t in e["latency_ms"].items() if "times_ms" in t}
    if series:
        parts.append("<h2>Latency distributions</h2>")
        parts.append(img(boxplot_png(series, "per-run latency"), "latency distributions"))
    parts.append("<h2>Confusion matrices</h2>")
    for entry in report["artifacts"]:
        parts.append(img(confusion_png(entry["accuracy"]["confusion"], entry["labels"], entry["name"]),
                         f"confusion matrix {entry['name']}"))
    parts.append("<h2>Details</h2><div class=\"details\">" + markdown_to_html(render_markdown(report)) + "</div>")
    return html_page(f"edgetl bench: target {report['target']}", "".join(parts))
