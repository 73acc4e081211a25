"""Agreement of third-party clients with `edgetl predict` on the artifacts of an `edgetl run`.

MediaPipe Tasks' ImageClassifier (.tflite), OpenVINO Model API's ClassificationModel (.xml, at the
plugin's default precision and at f32) and, with --task-library-python, the TFLite Task Library's
ImageClassifier (a second Python, see tests/clients/README.md), each on the photos centre-cropped by
edgetl's recipe (TFLite Metadata has no resize/crop step) and on the raw photos (each client resizes
them its own way). Prints a Markdown table.

    python tools/bench_clients.py runs/demo/export IMAGES_DIR [--task-library-python PY]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from edgetl.runtime import EdgeModel


def edgetl_top1(model: EdgeModel, images, **_) -> tuple[list[str], list[float]]:
    ranked = [model.predict(image, top_k=1)[0] for image in images]
    return [r[0] for r in ranked], [r[1] for r in ranked]


def mediapipe_top1(path: Path, images) -> tuple[list[str], list[float]]:
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=1)
    classifier = vision.ImageClassifier.create_from_options(options)
    try:
        results = [classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
                   for image in images]
    finally:
        classifier.close()
    top = [r.classifications[0].categories[0] for r in results]
    return [t.category_name for t in top], [t.score for t in top]


def model_api_top1(path: Path, images, f32: bool) -> tuple[list[str], list[float]]:
    from model_api.adapters import OpenvinoAdapter, create_core
    from model_api.models import Model

    config = {"INFERENCE_PRECISION_HINT": "f32"} if f32 else None
    model = Model.create_model(OpenvinoAdapter(create_core(), str(path), device="CPU", plugin_config=config),
                               preload=True)
    top = [model(np.ascontiguousarray(image[..., ::-1])).top_labels[0] for image in images]  # BGR, as OpenCV
    return [t.name for t in top], [float(t.confidence) for t in top]


def task_library_top1(python: str, path: Path, images) -> tuple[list[str], list[float]]:
    script = Path(__file__).resolve().parents[1] / "tests" / "clients" / "task_library_classify.py"
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, image in enumerate(images):
            files.append(str(Path(tmp) / f"{i:04d}.png"))
            Image.fromarray(image).save(files[-1])
        done = subprocess.run([python, str(script), str(path), *files], capture_output=True, text=True, check=True)
    results = json.loads(done.stdout.strip().splitlines()[-1])
    return [r["label"] for r in results], [r["score"] for r in results]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--task-library-python")
    args = parser.parse_args()
    photos = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    rows = ["| client | artifact | images | top-1 = edgetl | max score diff | scores in [0, 1] |",
            "|---|---|---|---|---|---|"]
    for artifact in sorted(args.artifacts.glob("model_*")):
        if artifact.suffix not in (".tflite", ".xml"):
            continue
        model = EdgeModel.load(artifact)
        raw = [np.asarray(Image.open(p).convert("RGB")) for p in photos]
        crops = [model.recipe.resize_and_crop(Image.open(p).convert("RGB")) for p in photos]
        clients = []
        if artifact.suffix == ".tflite":
            clients.append(("MediaPipe ImageClassifier", lambda im: mediapipe_top1(artifact, im), model))
            if args.task_library_python:
                clients.append(("TFLite Task Library", lambda im: task_library_top1(args.task_library_python,
                                                                                  artifact, im), model))
        else:
            clients.append(("Model API (default precision)", lambda im: model_api_top1(artifact, im, False),
                            EdgeModel.load(artifact, precision=None)))
            clients.append(("Model API (f32)", lambda im: model_api_top1(artifact, im, True), model))
        for name, client, reference in clients:
            for kind, images, ours_on in (("centre-cropped", crops, crops), ("raw photos", raw, photos)):
                labels, scores = client(images)
                ours, our_scores = edgetl_top1(reference, ours_on)
                agree = sum(a == b for a, b in zip(labels, ours))
                diff = max(abs(a - b) for a, b in zip(scores, our_scores))
                inside = all(0 <= s <= 1 for s in scores)
                rows.append(f"| {name} | {artifact.name} | {len(images)} {kind} | {agree}/{len(images)} "
                            f"({agree / len(images):.1%}) | {diff:.2e} | {'yes' if inside else 'NO'} |")
                print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
