"""Shared fixtures, each built once per test run (``built_once``: under pytest-xdist too): the embedded
sample, the real photos (skipped when absent), two tiny trained models and what the exporter writes
from them.

- ``tiny_model_dir``: EfficientNet-Lite0 at 96 px, for the tests where its topology matters (depthwise
  and pointwise convolutions, pair-safe weights, structured pruning, accuracy-aware export). Its exports:
  ``lite0_matrix`` (every format x mode, float input) and ``lite0_u8`` (INT8, uint8 input);
  ``exported_artifacts`` and ``artifact_subset`` hand out copies of some of those files.
- ``runtime_model_dir``: a 3-conv CNN trained for seconds, for the tests that need any real classifier
  (runtime, predict, decode, the HTTP service, hardening); ``cnn_artifacts`` holds its artifacts.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_PHOTOS = REPO.parent / "shared" / "data" / "hymenoptera" / "train"
TINY_SIZE = 96


# -- order of the files ------------------------------------------------------------------------------
# `pytest -n 2 --dist loadfile` hands whole files to the two workers; by default xdist queues them by
# their NUMBER of tests, so files of a few long end-to-end tests (test_pipeline's two) started last while
# the other worker sat idle. Files start longest first instead (the longest-processing-time rule), by
# their CPU time alone in one process (`/usr/bin/time pytest tests/test_x.py --durations=15`); files not
# listed are short and follow in name order. Re-measure when a file grows past a few minutes.
LONGEST_FIRST = ("test_export.py", "test_search.py", "test_prune.py", "test_pipeline.py", "test_foreign.py",
                 "test_safety.py", "test_bench.py", "test_hardening.py", "test_hardening_npu_search.py",
                 "test_export_int8.py", "test_stream.py", "test_metadata.py", "test_accuracy.py", "test_targets.py",
                 "test_qat.py")


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # xdist's controller: keep the collected order
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), str(item.path)))  # stable within a file


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]):
    """A session fixture's value built once per test run, under pytest-xdist too (its documented recipe):
    the first worker that asks builds it in the run's common temporary folder and pickles it there; any
    other worker waits on the lock and reads it. With ``--dist loadfile`` and the longest files first,
    the second worker usually asks long after the first built it, so it neither builds nor waits."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    import pickle

    from filelock import FileLock

    common = tmp_path_factory.getbasetemp().parent / "built_once"  # the run's folder, shared by its workers
    common.mkdir(exist_ok=True)
    stored = common / f"{name}.pickle"
    with FileLock(str(common / f"{name}.lock")):
        if stored.is_file():
            return pickle.loads(stored.read_bytes())
        folder = common / name
        if folder.exists():  # a build that failed in another worker: start afresh
            shutil.rmtree(folder)
        folder.mkdir()
        value = build(folder)
        stored.write_bytes(pickle.dumps(value))
        return value


SUBSET_PER_CLASS = 30


@pytest.fixture(scope="session")
def full_sample_dir() -> Path:
    """The whole embedded sample (all 244 ant/bee photos, what `edgetl run` uses by default)."""
    from edgetl.data import sample_dataset

    return sample_dataset()


@pytest.fixture(scope="session")
def sample_dir(full_sample_dir, tmp_path_factory) -> Path:
    """A fixed 30 + 30 subset of the embedded sample (every k-th photo of each class in name order),
    copied once per session: the tests that train, calibrate or bench on it stay as fast as they were
    with the old 60-photo sample."""
    def build(folder: Path) -> Path:
        root = folder / "hymenoptera"
        for cls in ("ants", "bees"):
            photos = sorted((full_sample_dir / cls).glob("*.jpg"))
            step = max(1, len(photos) // SUBSET_PER_CLASS)
            (root / cls).mkdir(parents=True)
            for photo in photos[::step][:SUBSET_PER_CLASS]:
                shutil.copyfile(photo, root / cls / photo.name)
        return root

    return built_once(tmp_path_factory, "sample", build)  # one path for every worker: models record it


@pytest.fixture(scope="session")
def sample_subset(sample_dir, tmp_path_factory) -> Callable[[int], Path]:
    """``sample_subset(n)``: the first ``n`` photos of each class of ``sample_dir``, copied once per
    session (benches, targets and profiles need a few labelled images, not 60)."""
    made: dict[int, Path] = {}

    def subset(per_class: int) -> Path:
        if per_class not in made:
            root = tmp_path_factory.mktemp(f"subset{per_class}") / "data"
            for cls in ("ants", "bees"):
                (root / cls).mkdir(parents=True)
                for path in sorted((sample_dir / cls).iterdir())[:per_class]:
                    shutil.copyfile(path, root / cls / path.name)
            made[per_class] = root
        return made[per_class]

    return subset


@pytest.fixture(scope="session")
def shared_photos() -> Path:
    if not SHARED_PHOTOS.is_dir():
        pytest.skip(f"real photos not found at {SHARED_PHOTOS} (the ../shared data folder is absent)")
    return SHARED_PHOTOS


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, sample_dir) -> Path:
    """EfficientNet-Lite0 with its real ImageNet weights at 96 px, head trained a few epochs on the
    sample: small and fast, yet its outputs depend on the image (a random-init backbone with
    inference-mode BatchNorm collapses to one output for every image, which would let parity checks
    pass vacuously). Tests must copy it (``tiny_model_copy``) before changing it."""
    from edgetl.training import FinetuneConfig, finetune

    def build(folder: Path) -> Path:
        finetune(FinetuneConfig(data=sample_dir, out=folder / "model", backbone="efficientnet_lite0",
                                weights="imagenet", strategy="features", epochs=3, lr=3e-3, input_size=TINY_SIZE,
                                batch_size=16, verbose=False))
        return folder / "model"

    return built_once(tmp_path_factory, "tiny", build)


@pytest.fixture
def tiny_model_copy(tiny_model_dir, tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


def copy_artifacts(src_dir: Path, names: Iterable[str], dst: Path) -> Path:
    """Copy artifacts (with their sidecars, and an IR's .bin) from one export folder into ``dst``."""
    from edgetl.metadata import sidecar_path

    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = src_dir / name
        extra = [path.with_suffix(".bin")] if path.suffix == ".xml" else []
        for file in (path, sidecar_path(path), *extra):
            shutil.copy(file, dst / file.name)
    return dst


@pytest.fixture(scope="session")
def lite0_matrix(tiny_model_dir, sample_dir, tmp_path_factory):
    """Every format x mode of the tiny Lite0 model, float input, calibrated and checked on all 60 sample
    images (the export's own gate at 0.9; tests assert their own thresholds on the recorded numbers).
    Read-only: copy before changing."""
    from edgetl.exporting import ExportConfig, export

    return built_once(tmp_path_factory, "lite0_matrix", lambda folder: export(ExportConfig(
        model=tiny_model_dir, out=folder / "artifacts", formats=("onnx", "tflite", "openvino"),
        modes=("fp32", "fp16", "dynamic", "int8"), calib=sample_dir, check=sample_dir, min_agreement=0.9,
        verbose=False)))


@pytest.fixture(scope="session")
def lite0_u8(tiny_model_dir, sample_dir, tmp_path_factory):
    """INT8 of every format of the tiny Lite0 model with raw uint8 pixels in (normalisation in the
    graph), checked on all 60 sample images. Read-only: copy before changing."""
    from edgetl.exporting import ExportConfig, export

    return built_once(tmp_path_factory, "lite0_u8", lambda folder: export(ExportConfig(
        model=tiny_model_dir, out=folder / "artifacts", formats=("onnx", "tflite", "openvino"), modes=("int8",),
        input_dtypes=("uint8",), calib=sample_dir, check=sample_dir, min_agreement=0.9, verbose=False)))


@pytest.fixture(scope="session")
def artifact_subset(tmp_path_factory) -> Callable[..., Path]:
    """``artifact_subset(name, {export folder: [artifact file names]})``: those artifacts copied into one
    new folder, so a test reads exactly the set it expects without exporting its own."""
    def subset(name: str, sources: dict[Path, Iterable[str]]) -> Path:
        dst = tmp_path_factory.mktemp(name) / "artifacts"
        for src_dir, names in sources.items():
            copy_artifacts(src_dir, names, dst)
        return dst

    return subset


@pytest.fixture(scope="session")
def exported_artifacts(lite0_matrix, artifact_subset) -> Path:
    """FP32 and INT8 of every format from the tiny model (copied from ``lite0_matrix``) for the client and
    profile tests (read-only: copy before changing)."""
    return artifact_subset("exported", {lite0_matrix.out: [a.path.name for a in lite0_matrix.artifacts
                                                          if a.mode in ("fp32", "int8")]})


# -- the small CNN ------------------------------------------------------------------------------------
def make_tiny_model_dir(out: Path, sample_dir: Path) -> Path:
    """A model directory shaped like finetune's (``build_classifier`` graph, ``edgetl.json``) around a
    3-conv backbone without BatchNorm, trained for seconds on the sample.

    Why not ``tiny_model_dir``: a random-init backbone runs BN in inference mode with untrained
    statistics and gives the same output for every image, which would make top-1 comparisons vacuous;
    this one is trained end to end, and small enough to export in seconds.
    """
    import keras

    from edgetl import zoo
    from edgetl.data import load_inputs, scan_folder
    from edgetl.training import build_classifier
    from edgetl.metadata import MODEL_FILE, MODEL_METADATA, MODEL_SCHEMA, sha256_file, software_versions, write_json

    keras.utils.set_random_seed(0)
    recipe = zoo.get("mobilenet_v2").recipe(96)
    images = scan_folder(sample_dir)
    inputs = keras.Input((96, 96, 3))
    x = inputs
    for filters in (8, 16, 32):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    model = build_classifier(keras.Model(inputs, x, name="backbone"), recipe, len(images.classes), 0.0)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(load_inputs(images.paths, recipe), np.asarray(images.labels), epochs=15, batch_size=16,
              verbose=0, shuffle=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / MODEL_FILE)
    write_json(out / MODEL_METADATA, {
        "schema": MODEL_SCHEMA, "labels": images.classes,
        "input": {"name": "image", "shape": [None, 96, 96, 3], "layout": "NHWC", "dtype": "float32"},
        "output": {"kind": "probabilities", "logits_layer": "logits"},
        "preprocessing": recipe.to_dict(), "backbone": "tiny_cnn", "backbones": ["tiny_cnn"],
        "weights": {"kind": "none"}, "strategy": "full",
        "dataset": {"root": str(sample_dir), "val_split": 0.0, "seed": 0,
                    "val": {"count": 0, "files": []}},
        "metrics": {}, "versions": software_versions(["tensorflow", "keras"]),
        "model_sha256": sha256_file(out / MODEL_FILE),
    })
    return out


def export_artifacts(model_dir: Path, out_dir: Path, check_dir: Path, formats=("onnx", "tflite", "openvino"),
                     input_dtypes=("float32",), modes=("fp32",), calib: Path | None = None) -> dict:
    """``edgetl.exporting`` -> {(format, mode, input dtype): artifact path}."""
    from edgetl.exporting import ExportConfig, export

    result = export(ExportConfig(model=model_dir, out=out_dir, formats=tuple(formats), modes=tuple(modes),
                                 input_dtypes=tuple(input_dtypes), check=check_dir, calib=calib,
                                 calib_size=16, verbose=False))
    return {(a.format, a.mode, a.input_dtype): a.path for a in result.artifacts}


@pytest.fixture(scope="session")
def runtime_model_dir(sample_dir, tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "runtime_model", lambda folder: make_tiny_model_dir(folder / "model", sample_dir))


CNN_IMAGES = 6  # 3 ants + 3 bees: enough for top-1 checks, cheap on 2 shared cores


@dataclass
class CnnArtifacts:
    paths: dict[str, Path]  # "onnx", "tflite", "openvino" (float input), "<fmt>_uint8", "tflite_int8_uint8"
    images: list[Path]
    keras_probs: np.ndarray  # the Keras model on data.load_inputs(images): the reference
    labels: list[str]


@pytest.fixture(scope="session")
def cnn_artifacts(runtime_model_dir, sample_dir, tmp_path_factory) -> CnnArtifacts:
    """The small CNN's artifacts, exported once: FP32 of every format with float and uint8 input, and one
    LiteRT full-integer artifact with raw-pixel input (sidecar quantization scale 1, zp 0). Read-only."""
    from edgetl.data import load_inputs
    from edgetl.preprocess import Preprocessing
    from edgetl.training import load_trained

    out = tmp_path_factory.mktemp("cnn_artifacts")
    made = export_artifacts(runtime_model_dir, out / "fp32", sample_dir, input_dtypes=("float32", "uint8"))
    paths = {fmt if dtype == "float32" else f"{fmt}_{dtype}": path for (fmt, _, dtype), path in made.items()}
    made = export_artifacts(runtime_model_dir, out / "int8", sample_dir, formats=("tflite",),
                            input_dtypes=("uint8",), modes=("int8",), calib=sample_dir)
    paths["tflite_int8_uint8"] = made[("tflite", "int8", "uint8")]
    images = (sorted((sample_dir / "ants").iterdir())[:CNN_IMAGES // 2]
              + sorted((sample_dir / "bees").iterdir())[:CNN_IMAGES // 2])
    model, meta = load_trained(runtime_model_dir)
    inputs = load_inputs(images, Preprocessing.from_dict(meta["preprocessing"]))
    probs = np.asarray(model.predict(inputs, verbose=0), np.float32)
    return CnnArtifacts(paths, images, probs, meta["labels"])
