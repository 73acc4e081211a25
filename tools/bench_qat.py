"""PTQ vs QAT (``export -q int8 --qat-epochs N``) per format on EfficientNet-Lite0: agreement with the
Keras FP32 model, cosine, top-1, and batch-1 latency of FP32 / PTQ / QAT in one interleaved run.
``write`` puts the tables of every setting's JSON into tools/RESULTS-accuracy.md, between the markers of
section "D. QAT" (the prose around them is written by hand).

    .venv/bin/python tools/bench_qat.py zero-shot --epochs 3 --work runs/qat/bench
    .venv/bin/python tools/bench_qat.py finetuned --model runs/qat/model --epochs 3 --work runs/qat/bench
    .venv/bin/python tools/bench_qat.py write --work runs/qat/bench

Settings (the issue's): ``zero-shot``: the 1000-class ImageNet model on the ant/bee photos, 120
calibration (even-indexed) / 121 disjoint evaluation (odd-indexed) photos, an ant correct when top-1 is
ImageNet class 310, a bee 309 (``bench_export.split_photos``). ``finetuned``: an ``edgetl finetune``
model; calibration = its train split only (the val photos never reach QAT), evaluation = its val split.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

import numpy as np  # noqa: E402

FORMATS = ("onnx", "tflite", "openvino")
BEGIN, END = "<!-- begin D. QAT (tools/bench_qat.py) -->", "<!-- end D. QAT -->"


def log(message: str) -> None:
    print(f"[bench_qat {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def zero_shot(work: Path):
    import bench_export

    model_dir = work / "efficientnet_lite0"
    if not (model_dir / "model.keras").exists():
        bench_export.efficientnet_zero_shot(work)
    calib, evaluation, _, _ = bench_export.split_photos(work, 120)
    return model_dir, calib, evaluation, lambda cls: bench_export.IMAGENET_CLASS[cls]


def finetuned(work: Path, model_dir: Path):
    from edgetl.metadata import read_model_metadata

    meta = read_model_metadata(model_dir)
    root = Path(meta["dataset"]["root"])
    val = {str(Path(f)) for f in meta["dataset"]["val"]["files"]}
    calib, evaluation = work / "train_split", work / "val_split"
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = str(path.relative_to(root))
        target = (evaluation if rel in val or str(path) in val else calib) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(path.resolve())
    labels = meta["labels"]
    return model_dir, calib, evaluation, lambda cls: labels.index(cls)


def export_pair(model_dir: Path, calib: Path, evaluation: Path, out: Path, epochs: int, calib_size: int):
    from edgetl.exporting import ExportConfig, export

    common = dict(model=model_dir, formats=FORMATS, calib=calib, calib_size=calib_size, check=evaluation,
                  min_agreement=0.01, verbose=True)
    started = time.perf_counter()
    ptq = export(ExportConfig(out=out / "ptq", modes=("fp32", "int8"), **common))
    ptq_s = time.perf_counter() - started
    started = time.perf_counter()
    qat = export(ExportConfig(out=out / f"qat{epochs}", modes=("int8",), qat_epochs=epochs, **common))
    return ptq, qat, ptq_s, time.perf_counter() - started


def measure(setting: str, args) -> dict:
    from edgetl.exporting.calibration import load_calibration
    from edgetl.exporting.keras_graph import load_source, output_model
    from edgetl.metrics import compare
    from edgetl.runtime.backends import open_backend
    from edgetl.timing import machine_summary, median_ms

    work = args.work / setting
    work.mkdir(parents=True, exist_ok=True)
    model_dir, calib, evaluation, class_of = zero_shot(work) if setting == "zero-shot" else finetuned(work, args.model)
    source = load_source(model_dir)
    images = load_calibration(evaluation, source.recipe, 100000)
    labels = np.asarray([class_of(p.parent.name) for p in images.paths])
    inputs = source.recipe.normalize(images.pixels)
    reference = output_model(source).predict(inputs, batch_size=16, verbose=0)
    ptq, qat, ptq_s, qat_s = export_pair(model_dir, calib, evaluation, work / "artifacts", args.epochs, args.calib_size)
    rows, runners = [], {}
    artifacts = [("fp32", a) for a in ptq.artifacts if a.mode == "fp32"] + \
                [("ptq", a) for a in ptq.artifacts if a.mode == "int8"] + [("qat", a) for a in qat.artifacts]
    for kind, artifact in artifacts:
        backend = open_backend(artifact.path, "cpu", args.threads)
        outputs = np.concatenate([backend.run(inputs[i:i + 16]) for i in range(0, len(inputs), 16)])
        stats = compare(reference, outputs)
        row = {"format": artifact.format, "kind": kind, "file": str(artifact.path), "mb": artifact.size_bytes / 1e6,
               "agreement": stats["top1_agreement"], "agreeing": int(round(stats["top1_agreement"] * len(inputs))),
               "cosine": stats["cosine_mean"], "max_abs_diff": stats["max_abs_diff"],
               "top1": float(np.mean(outputs.argmax(-1) == labels))}
        if kind == "qat":
            row["qat"] = artifact.sidecar["quantization"]["details"]["qat"]
            row["qat"].pop("activation_ranges", None)
        rows.append(row)
        one = inputs[:1]
        runners[f"{artifact.format} {kind}"] = lambda backend=backend, one=one: backend.run(one)
    load_before = os.getloadavg()
    latency = median_ms(runners, args.rounds, args.iters)
    load_after = os.getloadavg()
    for row in rows:
        row["ms"] = latency[f"{row['format']} {row['kind']}"]
    result = {"setting": setting, "epochs": args.epochs, "n_eval": int(len(inputs)),
              "calibration": qat.calibration, "fp32_top1": float(np.mean(reference.argmax(-1) == labels)),
              "rows": rows, "rounds": args.rounds, "iters": args.iters, "threads": args.threads,
              "load_average": [round(v, 2) for v in (*load_before, *load_after)], "machine": machine_summary(),
              "export_seconds": {"ptq (fp32 + int8, 3 formats)": round(ptq_s), "qat (int8, 3 formats)": round(qat_s)}}
    (args.work / f"{setting}-qat{args.epochs}.json").write_text(json.dumps(result, indent=1))
    log(json.dumps({r["format"] + " " + r["kind"]: (r["agreeing"], round(r["cosine"], 5), round(r["top1"], 3),
                                                       round(r["ms"], 2)) for r in rows}))
    return result


def table(result: dict) -> str:
    by = {(r["format"], r["kind"]): r for r in result["rows"]}
    n = result["n_eval"]
    lines = [f"| format | FP32 ms | PTQ: agreement | cosine | top-1 | ms | QAT {result['epochs']} ep: agreement | "
             f"cosine | top-1 | ms | QAT / PTQ latency |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for fmt in FORMATS:
        fp32, ptq, qat = by[(fmt, "fp32")], by[(fmt, "ptq")], by[(fmt, "qat")]
        lines.append(f"| {fmt} | {fp32['ms']:.2f} | {ptq['agreement']:.3f} ({ptq['agreeing']}/{n}) | {ptq['cosine']:.5f} | "
                     f"{ptq['top1']:.3f} | {ptq['ms']:.2f} | {qat['agreement']:.3f} ({qat['agreeing']}/{n}) | "
                     f"{qat['cosine']:.5f} | {qat['top1']:.3f} | {qat['ms']:.2f} | {qat['ms'] / ptq['ms']:.2f}x |")
    load = result["load_average"]
    lines.append("")
    lines.append(f"FP32 top-1 {result['fp32_top1']:.3f} on {n} photos. Latency: batch 1, {result['threads']} threads, "
                 f"median of {result['rounds']} interleaved rounds x {result['iters']} calls; load average "
                 f"{load[0]:.1f} before / {load[3]:.1f} after the timing. Export time: {result['export_seconds']}.")
    return "\n".join(lines)


def write(work: Path) -> None:
    from results_section import write_section

    results = [json.loads(p.read_text()) for p in sorted(work.glob("*-qat*.json"))]
    parts = [BEGIN, ""]
    for result in results:
        parts += [f"### {result['setting']}, `--qat-epochs {result['epochs']}`", "", table(result), ""]
    if results:
        parts += [f"Machine: {results[0]['machine']}.", ""]
    parts.append(END)
    write_section(REPO / "tools" / "RESULTS-accuracy.md", BEGIN, END, "\n".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("setting", choices=("zero-shot", "finetuned", "write"))
    parser.add_argument("--work", type=Path, default=Path("runs/qat/bench"))
    parser.add_argument("--model", type=Path, help="finetuned: the edgetl finetune model directory")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--calib-size", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.setting == "write":
        write(args.work)
    else:
        measure(args.setting, args)


if __name__ == "__main__":
    main()
