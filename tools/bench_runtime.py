"""What the device wrapper costs: ``edgetl.runtime.EdgeModel`` against the bare runtime call.

    .venv/bin/python tools/bench_runtime.py                       # builds tiny-model artifacts first
    .venv/bin/python tools/bench_runtime.py --model efficientnet_lite0
    .venv/bin/python tools/bench_runtime.py a.onnx b.tflite c.xml # artifacts with sidecars

Per artifact:

* cold start, each in a fresh interpreter (median of ``--cold-runs``): ``import edgetl.runtime``,
  ``EdgeModel.load`` (including the runtime package's import), first ``predict`` on a JPEG path;
* per-image latency (one image, batch 1, median and p90 of ``--repeat`` rounds, the variants
  interleaved round by round so load drift hits all alike):
  - ``bare``: the runtime's own call on the already-prepared input (ORT ``session.run``, LiteRT
    ``set_tensor/invoke/get_tensor``, OpenVINO ``infer``), built with the same thread/precision settings;
  - ``run``: ``EdgeModel.run`` on the same input (lock, output checks);
  - ``predict``: ``EdgeModel.predict`` on a uint8 array already at the input size (replayed
    preprocessing + softmax + top-k);
  - ``predict(jpeg)``: ``EdgeModel.predict`` on the JPEG path (decode + resize included).

Writes ``tools/RESULTS-runtime.md``. The measuring process never imports TensorFlow; artifacts are
built in a child process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgetl.preprocess import open_image  # noqa: E402
from edgetl.runtime import EdgeModel  # noqa: E402
from edgetl.timing import interleaved, machine_summary  # noqa: E402
from edgetl.runtime.backends import OPENVINO_DEVICE, import_runtime, ort_session_options  # noqa: E402

FORMATS = ("onnx", "tflite", "openvino")
SAMPLE = REPO / "edgetl" / "samples" / "hymenoptera" / "bees"


# -- artifacts (child process, TensorFlow allowed) ---------------------------------------------------
def build_artifacts(model: str, work: Path) -> list[Path]:
    """Run ``make`` in a child so TensorFlow never enters the measuring process."""
    command = [sys.executable, str(Path(__file__).resolve()), "make", "--model", model, "--work", str(work)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"bench_runtime: building artifacts failed:\n{result.stderr[-3000:]}")
    return [Path(line) for line in result.stdout.split() if line.strip()]


def make(model: str, work: Path) -> None:
    from edgetl.data import sample_dataset
    from edgetl.exporting import ExportConfig, export

    model_dir = work / "model"
    if not (model_dir / "edgetl.json").exists():
        if model == "tiny":
            from edgetl.training import FinetuneConfig, finetune

            # Latency only: one quick epoch is enough (the conftest tiny model, mobilenet_v2 at 96 px).
            finetune(FinetuneConfig(data=sample_dataset(), out=model_dir, backbone="mobilenet_v2",
                                    weights="none", strategy="features", epochs=1, input_size=96,
                                    batch_size=16, verbose=False))
        else:
            _imagenet_model_dir(model, model_dir)
    result = export(ExportConfig(model=model_dir, out=work / "artifacts", formats=FORMATS,
                                 check=sample_dataset(), verbose=False))
    print("\n".join(str(a.path) for a in result.artifacts))


def _imagenet_model_dir(name: str, model_dir: Path) -> None:
    """A model directory around the zoo's 1000-class ImageNet model (labels are class indices)."""
    from edgetl import zoo
    from edgetl.metadata import MODEL_FILE, MODEL_METADATA, MODEL_SCHEMA, sha256_file, write_json

    spec = zoo.get(name)
    keras_model = spec.build("imagenet", include_top=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    keras_model.save(model_dir / MODEL_FILE)
    recipe = spec.recipe()
    write_json(model_dir / MODEL_METADATA, {
        "schema": MODEL_SCHEMA, "labels": [f"imagenet_{i}" for i in range(1000)],
        "input": {"name": "image", "shape": [None, *recipe.input_size, 3], "layout": "NHWC", "dtype": "float32"},
        "output": {"kind": "logits", "logits_layer": "logits"}, "preprocessing": recipe.to_dict(),
        "backbone": name, "model_sha256": sha256_file(model_dir / MODEL_FILE)})


# -- bare runtime calls -------------------------------------------------------------------------------
def bare_runner(path: Path, threads: int | None):
    """The runtime's own inference call on the prepared batch, set up as the backend sets it up."""
    fmt = {".onnx": "onnx", ".tflite": "tflite", ".xml": "openvino"}[path.suffix]
    if fmt == "onnx":
        ort = import_runtime("onnxruntime", "onnx")
        session = ort.InferenceSession(str(path), sess_options=ort_session_options(threads),
                                       providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda batch: session.run(None, {name: batch})[0]
    if fmt == "tflite":
        interpreter_module = import_runtime("ai_edge_litert.interpreter", "tflite")
        interpreter = interpreter_module.Interpreter(model_path=str(path), num_threads=threads or os.cpu_count())
        interpreter.allocate_tensors()
        inp, out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]

        def run(batch):
            interpreter.set_tensor(inp, batch)
            interpreter.invoke()
            return interpreter.get_tensor(out)

        return run
    ov = import_runtime("openvino", "openvino")
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    request = ov.Core().compile_model(str(path), OPENVINO_DEVICE["cpu"], config).create_infer_request()
    return lambda batch: request.infer({0: batch})[0]


# -- measurements -------------------------------------------------------------------------------------
COLD = """
import json, sys, time
t0 = time.perf_counter()
from edgetl.runtime import EdgeModel
t1 = time.perf_counter()
model = EdgeModel.load(sys.argv[1], threads={threads})
t2 = time.perf_counter()
model.predict(sys.argv[2])
t3 = time.perf_counter()
print(json.dumps({{"import": t1 - t0, "load": t2 - t1, "first": t3 - t2,
                  "tensorflow": "tensorflow" in sys.modules}}))
"""


def cold_start(path: Path, image: Path, threads: int | None, runs: int) -> dict[str, float]:
    samples = []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", COLD.format(threads=threads), str(path), str(image)],
                             capture_output=True, text=True, env=env, check=True).stdout
        samples.append(json.loads(out.strip().splitlines()[-1]))
    assert not any(s["tensorflow"] for s in samples), "edgetl.runtime imported TensorFlow"
    return {key: statistics.median(s[key] for s in samples) for key in ("import", "load", "first")}


def latency(path: Path, image: Path, threads: int | None, repeat: int, warmup: int = 5) -> dict:
    model = EdgeModel.load(path, threads=threads)
    bare = bare_runner(path, threads)
    pixels = model.recipe.resize_and_crop(open_image(image, model.recipe.decode))
    batch = model.prepare(pixels)
    np.testing.assert_allclose(bare(batch).reshape(1, -1), model.run(batch), rtol=1e-5, atol=1e-5)
    variants = {"bare": lambda: bare(batch), "run": lambda: model.run(batch),
                "predict": lambda: model.predict(pixels), "predict(jpeg)": lambda: model.predict(image)}
    times = {name: [t / 1e3 for t in ms] for name, ms in interleaved(variants, repeat, 1, warmup).items()}
    stats = {name: {"median": statistics.median(t), "p90": float(np.percentile(t, 90))}
             for name, t in times.items()}
    return {"stats": stats, "runtime": model.backend.runtime, "version": model.backend.version(),
            "input": f"{model.input_size[0]}x{model.input_size[1]} {model.input_dtype}"}


def report(rows: list[dict], args, out: Path) -> None:
    ms = lambda s: f"{s * 1000:.2f}"  # noqa: E731
    lines = [
        "# edgetl.runtime overhead",
        "",
        f"Written by `tools/bench_runtime.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        f"{machine_summary()} (shared with other "
        f"jobs while measured), Python {platform.python_version()}, runtime threads = {args.threads}, "
        f"model `{args.model if not args.artifacts else 'given artifacts'}`, {args.repeat} rounds after "
        f"5 warm-up rounds, batch 1.",
        "",
        "Cold start (fresh interpreter, median of %d): `import edgetl.runtime`, `EdgeModel.load` (incl. "
        "the runtime package's import), first `predict` on a JPEG path. TensorFlow was never imported."
        % args.cold_runs,
        "",
        "| artifact | runtime | input | import ms | load ms | first predict ms |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in rows:
        c = row["cold"]
        lines.append(f"| {row['name']} | {row['runtime']} {row['version']} | {row['input']} | "
                     f"{ms(c['import'])} | {ms(c['load'])} | {ms(c['first'])} |")
    lines += [
        "",
        "Per-image latency, median (p90) ms. `bare` = the runtime's own call on the prepared input; "
        "`run` = `EdgeModel.run` on the same input; `predict` = `EdgeModel.predict` on a uint8 array at "
        "the input size (preprocessing + softmax + top-k); `predict(jpeg)` adds JPEG decode and resize. "
        "Ratios are medians over `bare`.",
        "",
        "| artifact | bare | run | predict | predict(jpeg) | run/bare | predict/bare |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        s = row["stats"]
        cell = lambda k: f"{ms(s[k]['median'])} ({ms(s[k]['p90'])})"  # noqa: E731
        lines.append(f"| {row['name']} | {cell('bare')} | {cell('run')} | {cell('predict')} | "
                     f"{cell('predict(jpeg)')} | {s['run']['median'] / s['bare']['median']:.2f} | "
                     f"{s['predict']['median'] / s['bare']['median']:.2f} |")
    previous = out.read_text() if out.exists() else ""
    kept = previous[previous.index("<!-- bench_verify -->"):] if "<!-- bench_verify -->" in previous else ""
    out.write_text("\n".join(lines) + "\n" + (f"\n{kept}" if kept else ""))  # tools/bench_verify.py's block
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["make"]:
        parser = argparse.ArgumentParser(prog="bench_runtime.py make")
        parser.add_argument("--model", default="tiny")
        parser.add_argument("--work", type=Path, required=True)
        args = parser.parse_args(argv[1:])
        make(args.model, args.work)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", nargs="*", type=Path)
    parser.add_argument("--model", default="tiny", help="tiny (mobilenet_v2 96 px) or efficientnet_lite0")
    parser.add_argument("--work", type=Path, default=None, help="where built artifacts go (kept)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "tools" / "RESULTS-runtime.md")
    args = parser.parse_args(argv)
    artifacts = args.artifacts
    if not artifacts:
        work = args.work or Path(tempfile.mkdtemp(prefix=f"bench_runtime_{args.model}_"))
        artifacts = build_artifacts(args.model, work)
    image = sorted(SAMPLE.iterdir())[0]
    rows = []
    for path in artifacts:
        print(f"measuring {path}", file=sys.stderr, flush=True)
        row = latency(path, image, args.threads, args.repeat)
        row["cold"] = cold_start(path, image, args.threads, args.cold_runs)
        row["name"] = path.name
        rows.append(row)
    report(rows, args, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
