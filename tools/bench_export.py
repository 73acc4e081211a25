"""FP32 vs INT8 per format: batch-1 latency, size, agreement and zero-shot accuracy. Writes
tools/RESULTS-export.md.

    .venv/bin/python tools/bench_export.py                 # efficientnet_lite0 + mobilenet_v2
    .venv/bin/python tools/bench_export.py --models mobilenet_v2 --rounds 3

Models:

* ``efficientnet_lite0``: the 1000-class ImageNet model (``zoo.get(...).build('imagenet',
  include_top=True)``, logits layer) used zero-shot on ../shared/data/hymenoptera/train: an ant photo is
  correct when top-1 is ImageNet class 310 (ant), a bee photo when it is 309 (bee). Calibration uses the
  even-indexed photos (up to --calib-size), accuracy/agreement the odd-indexed ones, so they are disjoint.
* ``mobilenet_v2``: weights none, a 2-class head, 224 px; latency and size only (random weights make
  accuracy meaningless).

Latency: one image, batch 1, ``--threads`` intra-op threads; rounds interleaved (every artifact once
per round, ``--iters`` timed calls each, median), then the median over rounds; ratios are vs ONNX
Runtime FP32 of the same model. Also measured on efficientnet_lite0: ONNX QDQ vs QOperator (same
ranges), S8S8, reduce_range and pair-safe weights, ORT calibration methods MinMax / Entropy /
Percentile, and exact vs fast INT8 kernels (``exact_int8``, see edgetl/runtime/cpu.py); variant rows use
full 8-bit weights unless named reduce_range or pair-safe, and exact kernels unless named "fast".
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from edgetl.timing import machine_summary, median_ms  # noqa: E402

PHOTOS = REPO.parent / "shared" / "data" / "hymenoptera" / "train"
IMAGENET_CLASS = {"ants": 310, "bees": 309}
FORMATS = ("onnx", "tflite", "openvino")


def log(message: str) -> None:
    print(f"[bench_export {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- model directories --------------------------------------------------------------------------------
def write_model_dir(model, recipe, labels: list[str], backbone: str, out: Path) -> Path:
    from edgetl.metadata import MODEL_SCHEMA, sha256_file, write_json

    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    write_json(out / "edgetl.json", {
        "schema": MODEL_SCHEMA, "labels": labels,
        "input": {"name": "image", "shape": [None, *recipe.input_size, 3], "layout": "NHWC", "dtype": "float32"},
        "output": {"kind": "logits", "logits_layer": "logits"}, "preprocessing": recipe.to_dict(),
        "backbone": backbone, "dataset": {}, "model_sha256": sha256_file(out / "model.keras")})
    return out


def efficientnet_zero_shot(work: Path) -> Path:
    from edgetl import zoo

    spec = zoo.get("efficientnet_lite0")
    model = spec.build("imagenet", include_top=True)
    return write_model_dir(model, spec.recipe(), [f"imagenet_{i}" for i in range(1000)], "efficientnet_lite0",
                           work / "efficientnet_lite0")


def mobilenet_random(work: Path) -> Path:
    from edgetl import zoo
    from edgetl.training import build_classifier

    spec = zoo.get("mobilenet_v2")
    recipe = spec.recipe(224)
    base = spec.build("none", 224)
    base.name = "backbone"
    model = build_classifier(base, recipe, 2, 0.2)
    return write_model_dir(model, recipe, ["a", "b"], "mobilenet_v2", work / "mobilenet_v2")


def split_photos(work: Path, calib_size: int) -> tuple[Path, Path, list[Path], np.ndarray]:
    """Disjoint calibration (even index) and evaluation (odd index) folders of symlinks."""
    calib_dir, eval_dir = work / "calib", work / "eval"
    paths, labels = [], []
    for cls in ("ants", "bees"):
        files = sorted(p for p in (PHOTOS / cls).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        for i, path in enumerate(files):
            target = (calib_dir if i % 2 == 0 else eval_dir) / cls / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(path.resolve())
            if i % 2 == 1:
                paths.append(target)
                labels.append(IMAGENET_CLASS[cls])
    return calib_dir, eval_dir, paths, np.asarray(labels)


# -- measuring ------------------------------------------------------------------------------------------
def outputs_of(path: Path, inputs: np.ndarray, threads: int, **options) -> np.ndarray:
    from edgetl.runtime.backends import open_backend

    backend = open_backend(path, "cpu", threads, **options)
    return np.concatenate([backend.run(inputs[i:i + 16]) for i in range(0, len(inputs), 16)])


def latencies(paths: dict[str, Path], sample: np.ndarray, rounds: int, iters: int, threads: int,
              options: dict[str, dict] | None = None) -> dict[str, float]:
    """``options``: backend options per name (e.g. ``exact_int8=False``)."""
    from edgetl.runtime.backends import open_backend

    options = options or {}
    backends = {name: open_backend(p, "cpu", threads, **options.get(name, {})) for name, p in paths.items()}
    one = sample[:1]
    return median_ms({name: (lambda b=backend: b.run(one)) for name, backend in backends.items()},
                     rounds, iters, warmup=3)


def export_all(model_dir: Path, out: Path, calib: Path, check: Path | None, calib_size: int,
               target_cpu: str = "any", formats: tuple[str, ...] = FORMATS) -> object:
    from edgetl.errors import CheckFailed
    from edgetl.exporting import ExportConfig, export

    config = ExportConfig(model=model_dir, out=out, formats=formats, modes=("fp32", "int8"), calib=calib,
                          calib_size=calib_size, check=check, min_agreement=0.98, verbose=True,
                          target_cpu=target_cpu)
    try:
        return export(config)
    except CheckFailed as failed:  # bench reports the numbers either way
        return failed.result


def load_previous(out: Path):
    from edgetl.exporting import ArtifactResult, ExportResult
    from edgetl.metadata import read_json, read_sidecar

    summary = read_json(out / "export_summary.json")
    artifacts = [ArtifactResult(a["format"], a["mode"], a["input_dtype"], out / a["file"],
                                read_sidecar(out / a["file"]), a["seconds"]) for a in summary["artifacts"]]
    return ExportResult(out, artifacts, summary["calibration"], summary["compared_on"])


def onnx_variants(result, calib: Path, calib_size: int, inputs: np.ndarray, reference: np.ndarray,
                  labels: np.ndarray | None, work: Path, threads: int, rounds: int, iters: int) -> list[str]:
    """QDQ vs QOperator (same ranges) and MinMax / Entropy / Percentile ranges, on ONNX."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgetl.exporting.backends import onnx as onnx_export
    from edgetl.exporting.calibration import load_calibration
    from edgetl.metadata import read_sidecar
    from edgetl.preprocess import Preprocessing

    fp32 = result.get("onnx", "fp32").path
    recipe = Preprocessing.from_dict(read_sidecar(fp32)["preprocessing"])
    calib_set = load_calibration(calib, recipe, calib_size)
    work.mkdir(parents=True, exist_ok=True)
    pre = work / "pre.onnx"
    onnx_export.preprocess(fp32, pre)
    lines = ["| ONNX INT8 variant | agreement | cosine | accuracy | latency ms |", "| --- | ---: | ---: | ---: | ---: |"]
    variants: dict[str, Path] = {"fp32": fp32}
    for method in ("minmax", "entropy", "percentile"):
        cache = work / f"ranges_{method}.json"
        start = time.perf_counter()
        onnx_export.calibrate(pre, calib_set, "float32", method, cache)
        log(f"calibration {method}: {time.perf_counter() - start:.0f}s")
        formats = ("QDQ", "QOperator") if method == "minmax" else ("QDQ",)
        for fmt in formats:
            path = work / f"int8_{method}_{fmt}.onnx"
            onnx_export.quantize_int8(pre, path, cache, method, quant_format=fmt)
            variants[f"{method} {fmt}"] = path
        if method == "minmax":  # the weight and type choices, same ranges
            for label, weights in (("pair-safe", "pair-safe"), ("U8S8 reduce_range", "7-bit")):
                path = work / f"int8_{label.replace(' ', '_').replace('-', '_')}.onnx"
                onnx_export.quantize_int8(pre, path, cache, method, int8_weights=weights)
                variants[f"minmax QDQ {label}"] = path
            path = work / "int8_S8S8.onnx"  # int8 activations: not an export choice, so ORT directly
            with onnx_export.quiet_ort_quantization():
                quantize_static(str(pre), str(path), None, quant_format=QuantFormat.QDQ, per_channel=True,
                                weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache),
                                extra_options={"WeightSymmetric": True})
            variants["minmax QDQ S8S8"] = path
    # The runtime runs ORT INT8 with exact (U8U8) kernels on x86 CPUs without VNNI; the same artifacts
    # with the fast, saturating U8S8 kernels, for comparison (identical rows on VNNI/ARM CPUs).
    fast = {"exact_int8": False}
    variants["minmax QDQ, fast U8S8 kernels"] = variants["minmax QDQ"]
    variants["minmax QDQ U8S8 reduce_range, fast U8S8 kernels"] = variants["minmax QDQ U8S8 reduce_range"]
    variants["minmax QDQ pair-safe, fast U8S8 kernels"] = variants["minmax QDQ pair-safe"]
    options = {name: fast for name in variants if name.endswith("fast U8S8 kernels")}
    timing = latencies(variants, inputs, rounds, iters, threads, options)
    for name, path in variants.items():
        out = outputs_of(path, inputs, threads, **options.get(name, {}))
        agreement = float((out.argmax(-1) == reference.argmax(-1)).mean())
        accuracy = f"{(out.argmax(-1) == labels).mean():.3f}" if labels is not None else "-"
        cosine = float(np.mean(np.sum(out * reference, -1) / np.linalg.norm(out, axis=-1)
                               / np.linalg.norm(reference, axis=-1)))
        lines.append(f"| {name} | {agreement:.3f} | {cosine:.4f} | {accuracy} | {timing[name]:.2f} |")
    # The same QDQ model with ORT's graph optimisations off runs as float fake-quantization (no integer
    # kernels): the gap to the optimised run is what the integer kernels themselves lose.
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(variants["minmax QDQ"]), options, providers=["CPUExecutionProvider"])
    out = np.concatenate([session.run(None, {session.get_inputs()[0].name: inputs[i:i + 16]})[0]
                          for i in range(0, len(inputs), 16)])
    cosine = float(np.mean(np.sum(out * reference, -1) / np.linalg.norm(out, axis=-1) / np.linalg.norm(reference, axis=-1)))
    lines.append(f"| minmax QDQ as float fake-quant (optimisations off) | "
                 f"{(out.argmax(-1) == reference.argmax(-1)).mean():.3f} | {cosine:.4f} | "
                 f"{(out.argmax(-1) == labels).mean():.3f} | - |")
    return lines


def bench_model(name: str, model_dir: Path, calib: Path, check: Path | None, eval_paths, labels,
                args, work: Path) -> list[str]:
    from edgetl.data import load_pixels
    from edgetl.metadata import read_sidecar
    from edgetl.preprocess import Preprocessing

    start = time.perf_counter()
    artifacts_dir = work / f"{name}_artifacts"
    if args.work and (artifacts_dir / "export_summary.json").exists():
        result = load_previous(artifacts_dir)  # --work kept an earlier run's export: measure it again
    else:
        result = export_all(model_dir, artifacts_dir, calib, check, args.calib_size, args.target_cpu,
                            tuple(args.formats.split(",")))
    log(f"{name}: exported in {time.perf_counter() - start:.0f}s")
    recipe = Preprocessing.from_dict(read_sidecar(result.get("onnx", "fp32").path)["preprocessing"])
    inputs = recipe.normalize(load_pixels(eval_paths, recipe))
    reference = outputs_of(result.get("onnx", "fp32").path, inputs, args.threads)
    artifacts = {f"{a.format} {a.mode}": a for a in result.artifacts}
    timing = latencies({k: a.path for k, a in artifacts.items()}, inputs, args.rounds, args.iters, args.threads)
    base_ms = timing["onnx fp32"]
    lines_cos = {}
    for key, artifact in artifacts.items():  # mean cosine of the logits with ORT FP32
        out = outputs_of(artifact.path, inputs, args.threads)
        lines_cos[key] = float(np.mean(np.sum(out * reference, -1) / np.linalg.norm(out, axis=-1)
                                       / np.linalg.norm(reference, axis=-1)))
    lines = [f"### {name}", "",
             "| artifact | MB | latency ms (b=1) | vs ORT fp32 | top-1 agreement vs FP32 | cosine | accuracy | parity (export) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for key, artifact in artifacts.items():
        out = outputs_of(artifact.path, inputs, args.threads)
        agreement = float((out.argmax(-1) == reference.argmax(-1)).mean())
        accuracy = f"{(out.argmax(-1) == labels).mean():.3f}" if labels is not None else "-"
        p = artifact.parity
        lines.append(f"| {artifact.path.name} | {artifact.size_bytes / 1e6:.2f} | {timing[key]:.2f} | "
                     f"{base_ms / timing[key]:.2f}x | {agreement:.3f} | {lines_cos[key]:.4f} | {accuracy} | "
                     f"max diff {p['max_abs_diff']:.1e}, agr {p['top1_agreement']:.3f} |")
    lines.append("")
    if args.variants and labels is not None:
        lines += onnx_variants(result, calib, args.calib_size, inputs, reference, labels, work / f"{name}_variants",
                               args.threads, args.rounds, args.iters)
        lines.append("")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="efficientnet_lite0,mobilenet_v2")
    parser.add_argument("--calib-size", type=int, default=120)
    parser.add_argument("--eval-size", type=int, default=0, help="limit evaluation photos (0: all odd-indexed)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-variants", dest="variants", action="store_false",
                        help="skip QDQ-vs-QOperator and calibration-method comparison")
    parser.add_argument("--target-cpu", default="any", help="export --target-cpu (OpenVINO weights follow it)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="formats to export (onnx is always needed)")
    parser.add_argument("--work", type=Path, default=None, help="keep models and artifacts here")
    parser.add_argument("--out", type=Path, default=REPO / "tools" / "RESULTS-export.md")
    args = parser.parse_args(argv)
    if not PHOTOS.is_dir():
        print(f"bench_export: {PHOTOS} not found (needs ../shared)", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    calib, eval_dir, eval_paths, labels = split_photos(work, args.calib_size)
    if args.eval_size:
        pick = np.linspace(0, len(eval_paths) - 1, args.eval_size).round().astype(int)
        eval_paths, labels = [eval_paths[i] for i in pick], labels[pick]
    lines = ["# Export benchmark: FP32 vs INT8", "",
             f"Machine: {machine_summary()} "
             f"(shared; other jobs were running), {args.threads} threads, batch 1, {args.rounds} interleaved "
             f"rounds x {args.iters} calls (median of per-round medians). Calibration: {args.calib_size} "
             f"even-indexed photos of {PHOTOS.name}/; evaluation: {len(eval_paths)} odd-indexed photos "
             f"(disjoint). Accuracy: zero-shot ImageNet top-1 (ant=310, bee=309).", ""]
    try:
        for name in [n.strip() for n in args.models.split(",") if n.strip()]:
            log(f"{name}: building")
            if name == "efficientnet_lite0":
                model_dir = work / name
                if not (args.work and (model_dir / "model.keras").exists()):
                    model_dir = efficientnet_zero_shot(work)
                lines += bench_model(name, model_dir, calib, eval_dir, eval_paths, labels, args, work)
            elif name == "mobilenet_v2":
                model_dir = mobilenet_random(work)
                lines += bench_model(name, model_dir, calib, eval_dir, eval_paths[:64], None,
                                     argparse.Namespace(**{**vars(args), "variants": False}), work)
            else:
                print(f"bench_export: unknown model {name}", file=sys.stderr)
                return 2
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    lines.append(f"Total bench time {time.perf_counter() - started:.0f}s.")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
