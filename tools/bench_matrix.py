"""Backbones x formats x quantization modes on this CPU, ratios vs ONNX Runtime FP32 from the same run.

    .venv/bin/python tools/bench_matrix.py --backbones mobilenet_v2,efficientnet_lite0 \
        --modes fp32,fp16,dynamic,int8 --formats onnx,tflite,openvino --input-size 96 --runs 30

For every backbone: a model directory (``--model DIR`` as given, or one trained here for one epoch on the
embedded ant/bee sample, ``weights none`` unless ``--weights imagenet`` is cached: latency does not
depend on the weights, accuracy does), ``edgetl.exporting`` of every format x mode into one folder, then
one ``edgetl.benchmark`` run over that folder so every ratio compares numbers taken minutes apart on the
same machine state. The Markdown table, with the machine described, goes to ``tools/RESULTS.md``.

Uses ``edgetl.exporting.export(ExportConfig(model=..., out=..., formats=..., modes=..., calib=...))``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgetl.report import human_bytes  # noqa: E402

COLUMNS = ["backbone", "format", "quantization", "size", "p50 ms (b1)", "p90 ms (b1)", "img/s (b{big})",
           "top-1", "agree vs ref", "speed vs ORT FP32", "size vs ORT FP32"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="mobilenet_v2,efficientnet_lite0",
                        help="comma-separated zoo names (trained here for one epoch)")
    parser.add_argument("--model", action="append", default=[], type=Path,
                        help="existing model directory (repeatable); used instead of training")
    parser.add_argument("--formats", default="onnx,tflite,openvino")
    parser.add_argument("--modes", default="fp32,fp16,dynamic,int8")
    parser.add_argument("--weights", default="none", help="none | imagenet (only when cached; no downloads)")
    parser.add_argument("--input-size", type=int, default=None, help="override the backbones' input size")
    parser.add_argument("--data", type=Path, default=None, help="labelled folder (default: embedded sample)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench_matrix")
    parser.add_argument("--results", type=Path, default=REPO / "tools" / "RESULTS.md")
    return parser.parse_args(argv)


def model_dirs(args, data: Path) -> list[Path]:
    from edgetl.training import FinetuneConfig, finetune

    dirs = list(args.model)
    for name in [n for n in args.backbones.split(",") if n] if not args.model else []:
        out = args.work / name / "model"
        if not (out / "model.keras").exists():
            print(f"[matrix] training {name} (1 epoch, weights {args.weights})", file=sys.stderr, flush=True)
            finetune(FinetuneConfig(data=data, out=out, backbone=name, weights=args.weights, strategy="features",
                                    epochs=1, input_size=args.input_size, batch_size=16, verbose=False))
        dirs.append(out)
    return dirs


def export_all(model_dir: Path, out: Path, formats: tuple[str, ...], modes: tuple[str, ...],
               calib: Path) -> list[Path]:
    """One export per format (each with the modes it supports here), into out/<format>/."""
    from edgetl.errors import CheckFailed
    from edgetl.exporting import ExportConfig, export, supported_modes

    support = supported_modes()
    folders = []
    for fmt in formats:
        able = tuple(m for m in modes if m in support[fmt])
        skipped = [m for m in modes if m not in able]
        if skipped:
            print(f"[matrix] {fmt}: {','.join(skipped)} not supported here, skipped", file=sys.stderr)
        if not able:
            continue
        print(f"[matrix] export {model_dir.parent.name}: {fmt} x {','.join(able)}", file=sys.stderr, flush=True)
        try:
            export(ExportConfig(model=model_dir, out=out / fmt, formats=(fmt,), modes=able, calib=calib,
                                calib_size=64, overwrite=True, verbose=False))
        except CheckFailed as exc:  # a parity miss still writes the artifacts; the bench shows the numbers
            print(f"[matrix] export parity: {exc}", file=sys.stderr)
        folders.append(out / fmt)
    return folders


def matrix_rows(bench_rows: list[dict]) -> list[dict]:
    """Ratios vs the ONNX Runtime FP32 artifact of the same backbone, at batch 1 (latency) / largest batch."""
    artifacts = [r for r in bench_rows if r["kind"] == "artifact"]
    small = min(r["batch_size"] for r in artifacts)
    big = max(r["batch_size"] for r in artifacts)
    out = []
    for row in [r for r in artifacts if r["batch_size"] == small]:
        base = next((r for r in artifacts if r["backbone"] == row["backbone"] and r["format"] == "onnx"
                     and r["quantization"] == "none" and r["batch_size"] == small), None)
        wide = next((r for r in artifacts if r["artifact"] == row["artifact"] and r["batch_size"] == big), row)
        out.append({**row, "throughput_big": wide["throughput_ips"], "big": big,
                    "speed_vs_ort": base["latency_p50_ms"] / row["latency_p50_ms"] if base else None,
                    "size_vs_ort": row["size_bytes"] / base["size_bytes"] if base else None})
    order = {"onnx": 0, "tflite": 1, "openvino": 2}
    quant = {"none": 0, "fp16": 1, "dynamic": 2, "int8": 3}
    return sorted(out, key=lambda r: (r["backbone"] or "", order.get(r["format"], 9), quant.get(r["quantization"], 9)))


def markdown(rows: list[dict], machine: dict, settings: dict, versions: dict, seconds: float) -> str:
    def pct(v):
        return "–" if v is None else f"{v:.1%}"

    def ratio(v):
        return "–" if v is None else f"{v:.2f}x"

    big = rows[0]["big"] if rows else 1
    isa = ", ".join(k for k, v in machine["isa"].items() if v) or "none"
    lines = ["# edgetl bench matrix", "",
             f"Machine: {machine['cpu_model']} ({machine['architecture']}, {machine['usable_cpus']} usable of "
             f"{machine['logical_cpus']} logical CPUs, {machine.get('memory_gib')} GiB), INT8-relevant ISA: {isa}. "
             f"OS {machine['os']}; 1-min load average {machine.get('load_average_1m')} at the last bench "
             f"(a shared machine: absolute times are pessimistic, ratios are the point).",
             f"Runtimes: onnxruntime {versions.get('onnxruntime')}, ai-edge-litert {versions.get('ai-edge-litert')}, "
             f"openvino {versions.get('openvino')}; "
             f"threads: {settings['threads']['requested'] or 'runtime defaults'}; "
             f"{settings['runs']} timed runs after {settings['warmup']} warm-up; batch sizes {settings['batch_sizes']}. "
             f"Run took {seconds / 60:.1f} min ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
             "Speed ratio = ORT FP32 p50 / this p50 at batch 1 (>1 is faster); size ratio = this / ORT FP32, "
             "same backbone, same run.", ""]
    header = [c.replace("{big}", str(big)) for c in COLUMNS]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["backbone"] or "?", r["format"], r["quantization"], human_bytes(r["size_bytes"]),
            f"{r['latency_p50_ms']:.2f}", f"{r['latency_p90_ms']:.2f}", f"{r['throughput_big']:.1f}",
            pct(r["top1"]), pct(r["agreement"]), ratio(r["speed_vs_ort"]), ratio(r["size_vs_ort"])]) + " |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from edgetl.benchmark import BenchConfig, bench
    from edgetl.data import sample_dataset

    start = time.time()
    data = args.data or sample_dataset()
    formats = tuple(f for f in args.formats.split(",") if f)
    modes = tuple(m for m in args.modes.split(",") if m)
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    rows, report = [], None
    for model in model_dirs(args, data):
        # One bench per model (each compared with its own Keras reference), all within this one run.
        artifacts = export_all(model, args.work / model.parent.name / "artifacts", formats, modes, data)
        result = bench(BenchConfig(artifacts=artifacts, data=data, out=args.work / model.parent.name / "bench",
                                   reference=model, runs=args.runs, warmup=args.warmup, batch_sizes=sizes,
                                   threads=args.threads, overwrite=True))
        rows += matrix_rows(result.rows)
        report = result.json
        print(f"[matrix] full bench report: {result.out}", file=sys.stderr)
    text = markdown(rows, report["machine"], report["settings"], report["versions"], time.time() - start)
    args.results.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
