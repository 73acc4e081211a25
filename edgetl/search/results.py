"""What a search leaves in ``--out``: ``trials.json`` (every trial), ``pareto.json`` (the front and
the winner per target), ``pareto.html`` (accuracy vs latency, marker area by size) and
``winner/<target>/`` (the winning artifact with its sidecar, ready to ship). Figures a simulator or a
vendor compiler produced keep their labels (``latency_evidence``, ``accuracy_evidence``) in every row."""

from __future__ import annotations

import dataclasses
import html
import shutil
from pathlib import Path
from typing import Any

from ..errors import CheckFailed
from ..metadata import (artifact_files, atomic_directory, is_edgetl_output, read_sidecar, sidecar_path, verify_artifact,
                        write_json)
from .pareto import front, latency_key, trial_objectives, winner

TRIALS_FILE = "trials.json"
PARETO_FILE = "pareto.json"
PARETO_HTML = "pareto.html"
COLUMNS = ["trial", "top1_ci", "drop_ci", "latency_p50_ms", "latency_vs_anchor_ci", "size_bytes", "agreement",
           "latency_evidence", "accuracy_evidence", "node"]


def write_results(config, trials, seconds: float, built: int, reused: int):
    from .driver import SearchResult

    baseline = _baseline(trials)
    records = [t.record() for t in trials]
    fronts, winners, rules = {}, {}, {}
    for target in config.targets:
        done = [r for r in records if r["target"] == target and r["status"] == "done"]
        fronts[target] = front(done, trial_objectives(done))
        winners[target], rules[target] = winner(done, baseline, config.max_latency_ms, config.max_size_mb,
                                                config.max_drop)
    result = SearchResult(config.out, trials, fronts, {t: w for t, w in winners.items() if w}, baseline,
                          seconds, built, reused)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()
                if not k.startswith("_")}
    write_json(config.out / TRIALS_FILE, {
        "schema": "edgetl.search-trials/1", "settings": settings, "baseline_top1": baseline,
        "counts": result.counts(), "seconds": round(seconds, 1), "stages_built": built, "stages_reused": reused,
        "trials": records})
    pareto = {"schema": "edgetl.search-pareto/1", "objectives": {
                  target: [{"metric": k, "goal": "max" if s > 0 else "min"} for k, s in trial_objectives(
                      [r for r in records if r["target"] == target and r["status"] == "done"])]
                  for target in config.targets},
              "baseline_top1": baseline,
              "constraints": {"max_latency_ms": config.max_latency_ms, "max_size_mb": config.max_size_mb,
                              "max_drop_points": config.max_drop},
              "targets": {}}
    for target in config.targets:
        shipped = _ship_winner(config.out, target, winners[target])
        pareto["targets"][target] = {"front": [_flat(r) for r in fronts[target]],
                                     "winner": _flat(winners[target]) if winners[target] else None,
                                     "winner_rule": rules[target], "winner_dir": shipped,
                                     "evidence": _evidence(fronts[target])}
    write_json(config.out / PARETO_FILE, pareto)
    (config.out / PARETO_HTML).write_text(_html(records, pareto))
    result.markdown = markdown(result, pareto)
    return result


def _baseline(trials) -> float | None:
    """The FP32 accuracy to stay near: the best fine-tuned (unpruned, Keras) model's val accuracy."""
    values = [t.stages["finetune"].get("val_accuracy") for t in trials if "finetune" in t.stages]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _evidence(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """How the front's figures were obtained (measured | simulated | estimated | not measured)."""
    return {kind: sorted({r.get(f"{kind}_evidence") or "measured" for r in rows}) for kind in ("latency", "accuracy")}


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in record.items() if k != "stages"}
    flat["artifact"] = (record["stages"].get("export") or {}).get("artifact")
    return flat


def _safe(target: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in target)


def _ship_winner(out: Path, target: str, best: dict[str, Any] | None) -> str | None:
    """Copy the winner's artifact files and sidecar into ``out/winner/<target>/`` (atomically); a
    stale winner of an earlier run, one edgetl wrote, goes when this run has none."""
    directory = out / "winner" / _safe(target)
    if best is None:
        if directory.is_dir() and is_edgetl_output(directory):
            shutil.rmtree(directory)
        return None
    artifact = Path(best["stages"]["export"]["artifact"])
    verify_artifact(artifact)
    with atomic_directory(directory, verb="search") as tmp:
        for path in _shipped_files(artifact):
            if path.exists():
                shutil.copy2(path, tmp / path.name)
        write_json(tmp / "winner.json", _flat(best))
    verify_artifact(directory / artifact.name)
    return str(directory)


def _shipped_files(artifact: Path) -> list[Path]:
    """Every file the sidecar hashes (a Vela model's summary CSV too), the sidecar, and for a compiled
    NPU model the uncompiled model it came from (what `edgetl bench --target ... --simulate` runs)."""
    sidecar = read_sidecar(artifact)
    hashed = sidecar.get("files") if isinstance(sidecar.get("files"), dict) else {}
    paths = [*artifact_files(artifact), *(artifact.parent / name for name in hashed), sidecar_path(artifact)]
    uncompiled = (sidecar.get("target") or {}).get("uncompiled")
    if uncompiled:
        paths += _shipped_files(artifact.with_name(uncompiled))
    return list(dict.fromkeys(paths))


def _with_intervals(rows: list[dict[str, Any]], baseline: float | None) -> list[dict[str, Any]]:
    """Front rows with their figures' 95% intervals as text: top-1, its drop from the baseline, the
    latency relative to the anchor."""
    from ..report import with_intervals

    out = []
    for row in with_intervals(rows):
        if baseline is not None and row.get("top1") is not None:
            drop = (baseline - row["top1"]) * 100
            bounds = ((baseline - row["top1_high"]) * 100, (baseline - row["top1_low"]) * 100) \
                if row.get("top1_low") is not None else None
            row["drop_ci"] = f"{drop:+.1f} pts" + (f" [{bounds[0]:+.1f}, {bounds[1]:+.1f}]" if bounds else "")
        out.append(row)
    return out


def markdown(result, pareto: dict[str, Any]) -> str:
    from ..report import markdown_table

    counts = result.counts()
    lines = [f"{len(result.trials)} trials: {counts['done']} done, {counts['failed']} failed, "
             f"{counts['pruned']} pruned in {result.seconds:.0f} s ({result.built} stages built, "
             f"{result.reused} reused)"]
    for target, entry in pareto["targets"].items():
        lines += ["", f"### Pareto front on {target} (accuracy vs latency vs size)", "",
                  markdown_table([{**r, "node": (r.get("node") or "")[:12]}
                                  for r in _with_intervals(entry["front"], pareto["baseline_top1"])], COLUMNS)
                  if entry["front"] else "(no finished trial)", ""]
        best = entry["winner"]
        lines.append(f"**winner on {target}: {best['trial']}** ({entry['winner_rule']}): top-1 {best['top1']:.1%}"
                     f"{_label(best, 'accuracy')}, {_latency(best)}, {best['size_bytes'] / 1e6:.2f} MB -> "
                     f"{entry['winner_dir']}" if best else f"**no winner on {target}**: {entry['winner_rule']}")
    failed = [t for t in result.trials if t.status == "failed"]
    if failed:
        lines += ["", "failed trials:"] + [f"- {t.id}: {t.reason}" for t in failed]
    return "\n".join(lines)


def _label(row: dict[str, Any], kind: str) -> str:
    evidence = row.get(f"{kind}_evidence")
    return f" ({evidence})" if evidence and evidence != "measured" else ""


def _latency(row: dict[str, Any]) -> str:
    if row.get("latency_p50_ms") is None:
        wall = (row.get("simulator_wall_ms_per_image") or {}).get("value")
        return "latency not measured" + (f" (simulator wall {wall:.0f} ms/image is not device latency)" if wall else "")
    text = f"{row['latency_p50_ms']:.2f} ms p50{_label(row, 'latency')}"
    if row.get("latency_vs_anchor") is not None:
        text += (f", {row['latency_vs_anchor']:.2f}x the anchor's latency [{row['latency_vs_anchor_low']:.2f}, "
                 f"{row['latency_vs_anchor_high']:.2f}]")
    return text


def require_winners(result) -> None:
    """``CheckFailed`` (exit 1) when some target has no trial meeting the constraints; everything
    else is written before."""
    missing = [t for t in result.fronts if t not in result.winners]
    if missing:
        raise CheckFailed(f"no trial on target {missing[0]} meets the constraints (see {result.out / PARETO_FILE})")


def _html(records: list[dict[str, Any]], pareto: dict[str, Any]) -> str:
    from ..report import html_page, html_table, img

    body = [f"<p>Objectives: top-1 up, p50 latency (batch 1) down, size down. Baseline FP32 top-1: "
            f"{'–' if pareto['baseline_top1'] is None else format(pareto['baseline_top1'], '.1%')}.</p>"]
    for target, entry in pareto["targets"].items():
        done = [r for r in records if r["target"] == target and r["status"] == "done"]
        body.append(f"<h2>{html.escape(target)}</h2>")
        if done:
            body.append(img(_plot(done, entry, target), f"Pareto front on {target}"))
        body.append(html_table(_with_intervals(entry["front"], pareto["baseline_top1"]), COLUMNS))
        best = entry["winner"]
        body.append(f'<p class="rec">winner: {html.escape(best["trial"]) if best else "none"} '
                    f'({html.escape(entry["winner_rule"])})</p>')
    others = [r for r in records if r["status"] != "done"]
    if others:
        body.append("<h2>failed and pruned trials</h2>" + html_table(others, ["trial", "status", "reason"]))
    return html_page("edgetl search", "".join(body))


def _plot(done: list[dict[str, Any]], entry: dict[str, Any], target: str) -> str:
    from ..report import figure_png, headless_pyplot

    plt = headless_pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    on_front = {r["trial"] for r in entry["front"]}
    biggest = max(r["size_bytes"] for r in done) or 1
    # Latency on x where every trial has one (relative to the anchor where every trial has that), else
    # size (a simulator's run).
    timed = all(r["latency_p50_ms"] is not None for r in done)
    key = latency_key(done)
    x = (lambda r: r[key]) if timed else (lambda r: r["size_bytes"] / 1e6)
    for row in done:
        size = 30 + 300 * row["size_bytes"] / biggest
        ax.scatter(x(row), row["top1"], s=size, alpha=0.8,
                   color="tab:blue" if row["trial"] in on_front else "lightgrey", edgecolor="black")
        ax.annotate(row["trial"].rsplit("@", 1)[0], (x(row), row["top1"]),
                    textcoords="offset points", xytext=(5, 4), fontsize=7)
    points = sorted((x(r), r["top1"]) for r in entry["front"])
    if points:
        ax.step(*zip(*points), where="post", color="tab:blue", alpha=0.5)
    if entry["winner"]:
        ax.scatter(x(entry["winner"]), entry["winner"]["top1"], marker="*", s=250, color="gold",
                   edgecolor="black", zorder=5, label="winner")
        ax.legend(loc="lower right")
    evidence = entry["evidence"]
    latency_label = "/".join(evidence["latency"])
    ax.set_xlabel(("latency relative to the anchor, batch 1 (paired rounds)" if key == "latency_vs_anchor" else
                   f"p50 latency, batch 1 (ms, {latency_label})") if timed else "size (MB; latency not measured)")
    ax.set_ylabel(f"top-1 (val, {'/'.join(evidence['accuracy'])})")
    ax.set_title(f"{target}: accuracy vs latency (marker area: size; blue: Pareto front)")
    ax.grid(alpha=0.3)
    return figure_png(fig)
