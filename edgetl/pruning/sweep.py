"""`edgetl prune --sweep 0.25,0.5,0.75`: one pruned model per sparsity and one report.

Per sparsity (plus the unpruned model as the reference row): val accuracy after recovery (and
before, one-shot), parameters, ONNX Runtime FP32 batch-1 latency (all models timed in interleaved
rounds, so machine load drifts hit every row alike), and the size and gzip size of the exported
ONNX and TFLite files (gzip size is what unstructured zeros buy on disk/over the air; the dense
file format itself does not shrink). Writes ``sweep.json``, ``sweep.md`` and ``sweep.png`` next to the
``sparsity_XX`` model directories, all in one atomic output directory.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from ..metadata import atomic_directory, read_model_metadata, software_versions, write_json
from ..metrics import file_sizes
from ..runtime.backends import open_backend
from ..timing import interleaved
from .artifacts import export_float

# nonzero_params: nonzero exported (ONNX) weights, the same basis for every row.
COLUMNS = ("label", "sparsity", "val_accuracy", "accuracy_before_recovery", "params", "nonzero_params",
           "latency_p50_ms", "onnx_bytes", "onnx_gzip_bytes", "tflite_bytes", "tflite_gzip_bytes")


def run_sweep(config, rounds: int = 5, runs_per_round: int = 20):
    from .config import PruneResult
    from .job import prune_model

    source_meta = read_model_metadata(config.model_dir)
    rows: list[dict[str, Any]] = []
    artifacts: dict[str, Path] = {}
    with atomic_directory(config.out, config.overwrite, inputs=config.inputs(), verb="prune") as tmp:
        dense = _row("dense", 0.0, config.model_dir, source_meta, None)
        artifacts["dense"] = _export(config.model_dir, tmp / "artifacts" / "dense", dense)
        rows.append(dense)
        for sparsity in config.sweep:
            name = f"sparsity_{round(sparsity * 100):02d}"
            result = prune_model(dataclasses.replace(config, sparsity=sparsity, sweep=(), out=tmp / name))
            row = _row(name, sparsity, tmp / name, result.metadata, result.record)
            artifacts[name] = _export(tmp / name, tmp / "artifacts" / name, row)
            rows.append(row)
        if len(rows) > 1:
            dense["params"] = rows[1]["record_params_before"]
        for row in rows:
            row.pop("record_params_before", None)
        _time_interleaved(rows, artifacts, rounds, runs_per_round)
        for row in rows:
            row.pop("_dir")
            row["model_dir"] = str(Path(config.model_dir) if row["label"] == "dense" else Path(config.out) / row["label"])
        summary = {
            "schema": "edgetl.prune-sweep/1",
            "method": config.method,
            "schedule": config.schedule if config.method == "magnitude" else None,
            "importance": config.importance if config.method == "structured" else None,
            "epochs": config.epochs,
            "source_model": str(Path(config.model_dir).resolve()),
            "backbone": source_meta.get("backbone"),
            "latency": {"runtime": "onnxruntime", "precision": "fp32", "batch": 1, "rounds": rounds,
                        "runs_per_round": runs_per_round, "statistic": "p50 over all runs"},
            "rows": rows,
            "versions": software_versions(["onnxruntime", "tensorflow", "keras"]),
        }
        write_json(tmp / "sweep.json", summary)
        (tmp / "sweep.md").write_text(_markdown(summary))
        _plot(rows, tmp / "sweep.png", f"{source_meta.get('backbone')} {config.method} pruning")
    return PruneResult(Path(config.out), summary)


def _row(label: str, sparsity: float, model_dir: Path, metadata: dict, record: dict | None) -> dict[str, Any]:
    row: dict[str, Any] = {"label": label, "sparsity": sparsity, "_dir": Path(model_dir),
                           "val_accuracy": (metadata.get("metrics") or {}).get("val_accuracy")}
    if record:
        row["val_accuracy"] = record["accuracy"]["after_recovery"]
        row["accuracy_before_recovery"] = record["accuracy"]["before_recovery"]
        row["record_params_before"] = record["params_before"]
        row["params"] = record["params_after"]
        if "channel_sparsity" in record:
            row["channel_sparsity"] = record["channel_sparsity"]
    return row


def _export(model_dir: Path, out: Path, row: dict[str, Any]) -> Path | None:
    paths = export_float(Path(model_dir), out)
    for fmt, path in paths.items():
        sizes = file_sizes(path)
        row[f"{fmt}_bytes"], row[f"{fmt}_gzip_bytes"] = sizes["bytes"], sizes["gzip_bytes"]
    if "onnx" in paths:  # one basis for every row: the exported weights (BN folded into the convs)
        from .artifacts import onnx_weights

        weights = onnx_weights(paths["onnx"])
        row["nonzero_params"] = int(sum(np.count_nonzero(w) for w in weights))
    return paths.get("onnx")


def interleaved_latency(paths: dict[str, Path], rounds: int, runs: int, threads: int | None = None,
                        warmup: int = 5) -> dict[str, dict[str, float]]:
    """Batch-1 latency of several artifacts timed in interleaved rounds, so machine load drifts
    alike over all of them and their ratios stay meaningful."""
    backends = {name: open_backend(path, "cpu", threads=threads) for name, path in paths.items() if path}
    inputs = {}
    for name, backend in backends.items():
        shape = [1 if d is None else int(d) for d in backend.input_shape]
        inputs[name] = np.random.default_rng(0).standard_normal(shape).astype(backend.input_dtype)
    times = interleaved({name: (lambda b=backend, x=inputs[name]: b.run(x)) for name, backend in backends.items()},
                        rounds, runs, warmup)
    return {name: {"p50_ms": float(np.percentile(t, 50)), "p90_ms": float(np.percentile(t, 90)),
                   "min_ms": float(np.min(t)), "n": len(t)} for name, t in times.items()}


def _time_interleaved(rows, artifacts: dict[str, Path], rounds: int, runs: int) -> None:
    latency = interleaved_latency(artifacts, rounds, runs)
    for row in rows:
        measured = latency.get(row["label"])
        if measured:
            row["latency_p50_ms"] = round(measured["p50_ms"], 3)
            row["latency_p90_ms"] = round(measured["p90_ms"], 3)


def _markdown(summary: dict[str, Any]) -> str:
    rows = summary["rows"]
    try:  # the bench's report helpers, when present
        from ..report import markdown_table

        table = markdown_table(rows, COLUMNS)
    except ImportError:
        table = "\n".join(["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
                          + ["| " + " | ".join(str(r.get(c, "–")) for c in COLUMNS) + " |" for r in rows])
    return (f"# Pruning sweep: {summary['backbone']} ({summary['method']})\n\n"
            f"Recovery epochs: {summary['epochs']}. Latency: ONNX Runtime FP32, batch 1, p50 over "
            f"{summary['latency']['rounds']} interleaved rounds of {summary['latency']['runs_per_round']} runs.\n"
            f"Sizes are the exported FP32 files; gzip shows what the zeros save once compressed.\n\n"
            f"{table}\n\n![sweep](sweep.png)\n")


def _plot(rows, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["sparsity"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    series = (("val_accuracy", "val accuracy"), ("latency_p50_ms", "ORT FP32 p50 latency (ms)"),
              ("onnx_gzip_bytes", "ONNX gzip size (bytes)"))
    for ax, (key, label) in zip(axes, series):
        ax.plot(x, [r.get(key) for r in rows], "o-")
        ax.set_xlabel("sparsity")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
