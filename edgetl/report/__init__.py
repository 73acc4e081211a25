"""Markdown and self-contained HTML reports from flat result rows (bench, and prune's ``--sweep``).

Reusable pieces:

* ``markdown_table(rows, columns)`` – a Markdown table with the column formats below;
* ``scatter_png(rows, x, y, label)`` – base64 PNG of one metric against another, labelled points;
* ``headless_pyplot()``, ``figure_png(fig)``, ``place_labels`` – for other reports' own figures (search);
* ``curve_report(rows, columns, x, y, title)`` – table + scatter as ``{"markdown", "html"}`` (what
  prune's sweep renders for its accuracy / latency / size curve);
* ``render_markdown(bench_json)`` / ``render_html(bench_json)`` – the bench report.

Plots use matplotlib's Agg backend and are embedded as ``data:image/png;base64`` so the HTML file is
one self-contained document.
"""

from .markdown import profile_summary_lines, render_markdown, summary_markdown
from .page import STYLE, curve_report, html_page, markdown_to_html, render_html
from .plots import boxplot_png, confusion_png, figure_png, headless_pyplot, img, place_labels, scatter_png
from .tables import (ARTIFACT_COLUMNS, COLUMNS, SUMMARY_COLUMNS, format_value, html_table, human_bytes, markdown_table,
                     summary_columns, with_intervals)

__all__ = ["profile_summary_lines", "render_markdown", "summary_markdown", "STYLE", "curve_report", "html_page",
           "markdown_to_html", "render_html", "boxplot_png", "confusion_png", "figure_png", "headless_pyplot", "img",
           "place_labels", "scatter_png", "ARTIFACT_COLUMNS", "COLUMNS", "SUMMARY_COLUMNS", "format_value",
           "html_table", "human_bytes", "markdown_table", "summary_columns", "with_intervals"]
