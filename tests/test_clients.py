"""The artifacts in clients nobody here wrote: MediaPipe Tasks' ImageClassifier (TFLite Metadata),
OpenVINO Model API's ClassificationModel (IR rt_info), ONNX Runtime's model metadata, the TFLite Task
Library (in a second environment, when one is given), and edgetl itself without the sidecars."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.exporting import ExportConfig, export
from edgetl.runtime import EdgeModel

TFLITE = ("model_tflite_fp32.tflite", "model_tflite_int8.tflite")
OPENVINO = ("model_openvino_fp32.xml", "model_openvino_int8.xml")
MIN_AGREEMENT = 0.99


@pytest.fixture(scope="module")
def exported(exported_artifacts) -> Path:
    return exported_artifacts  # conftest: FP32 + INT8 of every format of the tiny Lite0 model


@pytest.fixture(scope="module")
def crops(exported, sample_dir) -> list[np.ndarray]:
    """The sample's photos centre-cropped by edgetl's recipe: TFLite Metadata has no resize/crop step,
    so clients get the crop and agreement measures the models, not two resizers."""
    recipe = EdgeModel.load(exported / TFLITE[0]).recipe
    photos = sorted(sample_dir.glob("*/*.jpg"))
    return [np.ascontiguousarray(recipe.resize_and_crop(Image.open(p).convert("RGB"))) for p in photos]


def _edgetl_top1(artifact: Path, crops, **options) -> tuple[list[str], list[float]]:
    model = EdgeModel.load(artifact, **options)
    ranked = [model.predict(crop, top_k=1)[0] for crop in crops]
    return [label for label, _ in ranked], [score for _, score in ranked]


@pytest.mark.parametrize("name", TFLITE)
def test_mediapipe_image_classifier_loads_tflite_and_agrees(exported, crops, name):
    mp = pytest.importorskip("mediapipe")
    from mediapipe.tasks.python import BaseOptions, vision

    labels, scores = _edgetl_top1(exported / name, crops)
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(exported / name)),
                                            max_results=2)
    classifier = vision.ImageClassifier.create_from_options(options)
    try:
        results = [classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=crop)) for crop in crops]
    finally:
        classifier.close()
    heads = [(h.head_index, h.head_name) for h in results[0].classifications]
    assert heads == [(0, "probabilities"), (1, "logits")]
    first = [r.classifications[0].categories for r in results]
    agreement = np.mean([c[0].category_name == label for c, label in zip(first, labels)])
    assert agreement >= MIN_AGREEMENT, agreement
    client_scores = np.array([[c.score for c in cats] for cats in first])
    assert ((client_scores >= 0) & (client_scores <= 1)).all()
    assert np.allclose(client_scores.sum(axis=1), 1.0, atol=1e-5)  # both classes: a softmax
    assert np.allclose(client_scores[:, 0], scores, atol=1e-5)  # the same probabilities as edgetl


@pytest.mark.parametrize("name", OPENVINO)
def test_openvino_model_api_loads_ir_and_agrees(exported, crops, name):
    models = pytest.importorskip("model_api.models")

    # Model API compiles at OpenVINO's default precision (bf16 on AVX-512 BF16/AMX CPUs): compare with
    # edgetl at that precision too (precision=None), then both at f32.
    labels, _ = _edgetl_top1(exported / name, crops, precision=None)
    model = models.Model.create_model(str(exported / name), device="CPU", preload=True)
    assert type(model).__name__ == "ClassificationModel"
    # Model API takes OpenCV images (BGR); the rt_info tells it to reverse them for this RGB model.
    results = [model(np.ascontiguousarray(crop[..., ::-1])) for crop in crops]
    top = [r.top_labels[0] for r in results]
    agreement = np.mean([t.name == label for t, label in zip(top, labels)])
    assert agreement >= MIN_AGREEMENT, agreement
    confidences = np.array([t.confidence for t in top])
    assert ((confidences >= 0) & (confidences <= 1)).all()
    raw = np.stack([r.raw_scores for r in results])
    assert np.allclose(raw.sum(axis=1), 1.0, atol=1e-4)
    from model_api.adapters import OpenvinoAdapter, create_core

    adapter = OpenvinoAdapter(create_core(), str(exported / name), device="CPU",
                              plugin_config={"INFERENCE_PRECISION_HINT": "f32"})
    f32_model = models.Model.create_model(adapter, preload=True)
    f32 = [f32_model(np.ascontiguousarray(crop[..., ::-1])).top_labels[0] for crop in crops]
    labels, scores = _edgetl_top1(exported / name, crops)
    assert np.mean([t.name == label for t, label in zip(f32, labels)]) >= MIN_AGREEMENT
    assert np.abs(np.array([t.confidence for t in f32]) - np.asarray(scores)).max() < 1e-4


def test_onnx_metadata_props_describe_the_artifact(exported):
    import onnxruntime as ort

    meta = ort.InferenceSession(str(exported / "model_onnx_int8.onnx")).get_modelmeta().custom_metadata_map
    embedded = json.loads(meta["edgetl"])
    sidecar = json.loads((exported / "model_onnx_int8.onnx.json").read_text())
    assert meta["edgetl_schema"] == embedded["schema"] == "edgetl.embedded/1"
    assert json.loads(meta["labels"]) == sidecar["labels"] == embedded["labels"]
    assert json.loads(meta["preprocessing"]) == sidecar["preprocessing"]
    assert embedded["quantization"]["mode"] == "int8"
    assert meta["model_info model_type"] == "Classification"
    assert meta["model_info labels"].split() == sidecar["labels"]


def test_tflite_metadata_reads_back_with_the_standard_schema(exported):
    schema = pytest.importorskip("mediapipe.tasks.metadata.metadata_schema_py_generated")
    import zipfile

    from ai_edge_litert.tools import flatbuffer_utils

    path = exported / "model_tflite_fp32.tflite"
    model = flatbuffer_utils.read_model(str(path))
    entry = next(m for m in model.metadata if m.name in ("TFLITE_METADATA", b"TFLITE_METADATA"))
    meta = schema.ModelMetadataT.InitFromObj(
        schema.ModelMetadata.GetRootAs(bytes(model.buffers[entry.buffer].data), 0))
    sidecar = json.loads((exported / "model_tflite_fp32.tflite.json").read_text())
    graph = meta.subgraphMetadata[0]
    image = graph.inputTensorMetadata[0]
    normalization = image.processUnits[0].options
    assert list(normalization.mean) == sidecar["preprocessing"]["mean"]
    assert list(normalization.std) == sidecar["preprocessing"]["std"]
    assert image.content.contentProperties.colorSpace == schema.ColorSpaceType.RGB
    outputs = [(o.name.decode(), o.associatedFiles[0].name.decode(), o.associatedFiles[0].type)
               for o in graph.outputTensorMetadata]
    assert outputs == [("probabilities", "labels.txt", schema.AssociatedFileType.TENSOR_AXIS_LABELS),
                       ("logits", "labels.txt", schema.AssociatedFileType.TENSOR_AXIS_LABELS)]
    assert meta.minParserVersion.decode() == "1.0.0"
    with zipfile.ZipFile(path) as archive:
        assert archive.read("labels.txt").decode().split() == sidecar["labels"]
    assert sidecar["output"]["name"] == "logits" and sidecar["output"]["probabilities"]["index"] == 0


def test_artifacts_without_sidecars_predict_the_same(exported, crops, tmp_path):
    from edgetl.cli import main

    bare = tmp_path / "bare"
    bare.mkdir()
    for path in exported.iterdir():
        if path.suffix in (".onnx", ".tflite", ".xml", ".bin"):
            shutil.copy(path, bare / path.name)
    for path in sorted(bare.iterdir()):
        if path.suffix == ".bin":
            continue
        with_sidecar = EdgeModel.load(exported / path.name).probabilities(crops[:8])
        without = EdgeModel.load(path).probabilities(crops[:8])
        assert np.array_equal(with_sidecar, without), path.name
    Image.fromarray(crops[0]).save(tmp_path / "crop.png")
    assert main(["predict", str(bare / "model_tflite_int8.tflite"), str(tmp_path / "crop.png"), "--json"]) == 0


def test_static_batch_ir_runs_in_benchmark_app_as_is(runtime_model_dir, sample_subset, tmp_path):
    out = tmp_path / "static"  # the small CNN: only the static batch matters here, not the topology
    export(ExportConfig(model=runtime_model_dir, out=out, formats=("onnx", "openvino"), modes=("fp32",),
                        check=sample_subset(4), static_batch=2, verbose=False))
    ir = out / "model_openvino_fp32.xml"
    assert json.loads((ir.parent / (ir.name + ".json")).read_text())["input"]["shape"][0] == 2
    model = EdgeModel.load(ir)
    assert model.backend.input_shape[0] == 2 and not model.backend.dynamic_batch
    import onnx

    dims = onnx.load(str(out / "model_onnx_fp32.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 2
    benchmark_app = Path(sys.executable).with_name("benchmark_app")
    if not benchmark_app.exists():
        pytest.skip("benchmark_app is not installed beside this Python")
    run = subprocess.run([str(benchmark_app), "-m", str(ir), "-d", "CPU", "-t", "1", "-hint", "latency"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "Median:" in run.stdout


def test_task_library_image_classifier_agrees(exported, crops, tmp_path):
    """tflite-support cannot live in the test venv (protobuf 3.20; its pybind types clash with
    TensorFlow's): EDGETL_TASK_LIBRARY_PYTHON names a Python that has it (tests/clients/README)."""
    python = os.environ.get("EDGETL_TASK_LIBRARY_PYTHON")
    if not python:
        pytest.skip("EDGETL_TASK_LIBRARY_PYTHON is not set (a Python with tflite-support 0.4.4)")
    images = []
    for i, crop in enumerate(crops):
        images.append(tmp_path / f"{i:03d}.png")
        Image.fromarray(crop).save(images[-1])
    script = Path(__file__).with_name("clients") / "task_library_classify.py"
    for name in TFLITE:
        labels, scores = _edgetl_top1(exported / name, crops)
        run = subprocess.run([python, str(script), str(exported / name), *map(str, images)],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        results = json.loads(run.stdout.strip().splitlines()[-1])
        agreement = np.mean([r["label"] == label for r, label in zip(results, labels)])
        assert agreement >= MIN_AGREEMENT, (name, agreement)
        assert all(0 <= r["score"] <= 1 for r in results)
        assert np.allclose([r["score"] for r in results], scores, atol=1e-5)
