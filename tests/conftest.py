"""Shared fixtures: the embedded sample, the real photos (skipped when absent) and one tiny trained
model that export, bench, runtime and prune tests reuse (trained once per session)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_PHOTOS = REPO.parent / "shared" / "data" / "hymenoptera" / "train"
TINY_SIZE = 96


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
    root = tmp_path_factory.mktemp("sample") / "hymenoptera"
    for cls in ("ants", "bees"):
        photos = sorted((full_sample_dir / cls).glob("*.jpg"))
        step = max(1, len(photos) // SUBSET_PER_CLASS)
        (root / cls).mkdir(parents=True)
        for photo in photos[::step][:SUBSET_PER_CLASS]:
            shutil.copyfile(photo, root / cls / photo.name)
    return root


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

    out = tmp_path_factory.mktemp("tiny") / "model"
    finetune(FinetuneConfig(data=sample_dir, out=out, backbone="efficientnet_lite0", weights="imagenet",
                            strategy="features", epochs=3, lr=3e-3, input_size=TINY_SIZE, batch_size=16,
                            verbose=False))
    return out


@pytest.fixture
def tiny_model_copy(tiny_model_dir, tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


@pytest.fixture(scope="session")
def exported_artifacts(tiny_model_dir, sample_dir, tmp_path_factory) -> Path:
    """FP32 and INT8 of every format from the tiny model, exported once for the client and profile
    tests (read-only: copy before changing)."""
    from edgetl.exporting import ExportConfig, export

    out = tmp_path_factory.mktemp("exported") / "artifacts"
    export(ExportConfig(model=tiny_model_dir, out=out, formats=("onnx", "tflite", "openvino"),
                        modes=("fp32", "int8"), calib=sample_dir, calib_size=16, min_agreement=0.9,
                        verbose=False))
    return out
