"""Self-contained HTML pages: the page frame, the Markdown report as HTML, the bench report page and
table + scatter curves (prune's sweep)."""

from __future__ import annotations

import html
from typing import Any, Sequence

from .markdown import machine_line, render_markdown
from .plots import boxplot_png, confusion_png, img, scatter_png
from .tables import html_table, markdown_table, summary_columns, with_intervals

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
    rows = with_intervals(report["rows"])
    smallest = min((r["batch_size"] for r in rows), default=1)
    at_smallest = [r for r in rows if r["batch_size"] == smallest]
    failed = "".join(f"<p><b>{html.escape(f['name'])}</b> ({html.escape(f['format'])}): FAILED: "
                     f"{html.escape(f['reason'])}</p>" for f in report.get("failed") or [])
    parts = [failed + f"<p class=\"rec\">{html.escape(report['recommendation']['text'])}</p>",
             f"<p>machine: {html.escape(machine_line(report['machine']))}</p>",
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
