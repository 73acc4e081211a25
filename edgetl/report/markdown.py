"""The bench report as Markdown (report.md), and the summary `edgetl run` prints."""

from __future__ import annotations

from typing import Any

from .tables import ARTIFACT_COLUMNS, format_value, human_bytes, markdown_table, summary_columns, with_intervals


def machine_line(machine: dict[str, Any]) -> str:
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
    rows = with_intervals(report["rows"])
    settings = report["settings"]
    reference = report.get("reference")
    lines = [f"# edgetl bench: target {report['target']}", ""]
    lines.append(f"- machine: {machine_line(report['machine'])}")
    lines.append("- evidence: every figure below is **measured** on this machine (simulated/estimated NPU "
                 "figures come from `edgetl bench --target npu:... --simulate`)")
    threads = settings["threads"]["requested"]
    lines.append(f"- runs: {settings['runs']} timed after {settings['warmup']} warm-up, batch sizes "
                 f"{', '.join(map(str, settings['batch_sizes']))}, threads: {threads or 'runtime default'}")
    data = report["data"]
    lines.append(f"- data: {data['n_images']} images, {len(data['classes'])} classes ({data['root']})")
    lines.append(f"- intervals: 95%. Latency: the {settings['runs']} timed calls of every artifact, batch size and the "
                 "reference alternate in rounds (each turn: one untimed call, then 2 timed), so ratios are "
                 "per-round pairs (median, bootstrap over rounds); two artifacts "
                 "whose ratio interval covers 1x are within noise of each other. Top-1: Wilson interval; change "
                 "vs the reference: paired (Newcombe) interval, flips = images exactly one of the two gets "
                 "right, p = exact McNemar test on them")
    if reference:
        ref_rows = [r for r in rows if r["kind"] == "reference"]
        p50 = ", ".join(f"b{r['batch_size']} {r['latency_p50_ms']:.2f} ms" for r in ref_rows)
        interval = reference["accuracy"].get("interval")
        ci = f" [{interval[0]:.1%}, {interval[1]:.1%}]" if interval else ""
        lines.append(f"- reference: Keras FP32 on {reference['device']}: top-1 {reference['accuracy']['top1']:.1%}{ci}, "
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
    failed, elsewhere = report.get("failed") or [], report.get("not_benched") or []
    if failed or elsewhere:
        lines.append("## Not benched")
        lines.append("")
        lines += [f"- **{f['name']}** ({f['format']}): FAILED: {f['reason']}" for f in failed]
        lines += [f"- **{f['name']}** ({f['format']}): not run here: {f['reason']}" for f in elsewhere]
        lines.append("")
    lines += profile_summary_lines(report)
    lines.append("## Summary")
    lines.append("")
    lines.append(markdown_table(rows, summary_columns(rows)))
    lines.append("")
    lines.append(f"**{report['recommendation']['text']}**")
    if report["recommendation"].get("rule"):
        lines += ["", f"(rule: {report['recommendation']['rule']})"]
    lines.append("")
    return "\n".join(lines)


def summary_markdown(report: dict[str, Any]) -> str:
    """The summary table and the recommendation: what `edgetl run` prints (the full report is a file)."""
    rows = with_intervals(report["rows"])
    return "\n".join([markdown_table(rows, summary_columns(rows)), "",
                      f"**{report['recommendation']['text']}**"])


def _extra_artifact_lines(entry: dict[str, Any], mine: list[dict[str, Any]]) -> list[str]:
    """Precision, benchmark_app and the per-op profile of one artifact (Markdown lines)."""
    lines = _accuracy_lines(entry)
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


def _accuracy_lines(entry: dict[str, Any]) -> list[str]:
    """Flips against the FP32 artifact, and precision / recall per class with the change from the reference."""
    lines = []
    vs = entry.get("vs_fp32_accuracy")
    if vs:
        low, high = vs["change_interval"]
        lines.append(f"- vs the FP32 {entry['format']} artifact: top-1 change {vs['change'] * 100:+.1f} pts "
                     f"[{low * 100:+.1f}, {high * 100:+.1f}], {vs['flips']} flips ({vs['lost']} lost, "
                     f"{vs['gained']} gained), exact McNemar p={vs['mcnemar_p']:.2f}")
    classes = entry["accuracy"].get("per_class") or {}
    if classes:
        def figure(values: dict[str, Any], key: str) -> str:
            value, change = values[key], values.get(f"{key}_change")
            return "–" if value is None else f"{value:.2f}" + (f" ({change:+.2f})" if change is not None else "")

        lines.append("- per class (precision / recall, change vs reference): " + "; ".join(
            f"{name} {figure(v, 'precision')} / {figure(v, 'recall')} (n={v['support']})" for name, v in classes.items()))
    return lines


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
