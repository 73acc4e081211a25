"""Streamed input (bounded parallel decode), the frozen-feature cache and the recipe knobs; one real-photo
five-class run on a small flowers subset."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.data import ImageSet, load_pixels, make_dataset
from edgetl.preprocess import Preprocessing
from edgetl.streaming import decoded, prefetch_map
from edgetl.training import FinetuneConfig, finetune, load_trained

REPO = Path(__file__).resolve().parents[1]
FLOWERS = REPO.parent / "shared" / "data" / "flowers" / "train"


def _photos(root: Path, n: int, size=(40, 48)) -> list[Path]:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(root / f"{i:02d}.png")
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_prefetch_window_is_bounded_and_ordered():
    pulled = []

    def items():
        for i in range(100):
            pulled.append(i)
            yield i

    stream = prefetch_map(lambda i: i * i, items(), workers=2, window=5)
    assert next(stream) == 0 and len(pulled) <= 6  # never more than the window ahead of the consumer
    assert list(stream) == [i * i for i in range(1, 100)]


def test_stream_matches_the_array_path_and_skips_a_file_gone_bad_midstream(tmp_path, caplog):
    paths = _photos(tmp_path / "a", 7)
    recipe = Preprocessing().with_input_size(24)
    expected = load_pixels(paths, recipe)
    images = ImageSet(["a", "b"], paths, [i % 2 for i in range(7)], tmp_path)
    streamed = np.concatenate([x.numpy() for x, _ in make_dataset(images, recipe, 3, training=False)])
    np.testing.assert_array_equal(streamed, recipe.normalize(expected))
    # A file that broke after the folder scan: left out of the pass, with the usual one warning.
    paths[3].write_bytes(b"\xff\xd8 broken")
    with caplog.at_level("WARNING", logger="edgetl"):
        got = [i for i, _ in decoded(paths, recipe)]
        labels = np.concatenate([y.numpy() for _, y in make_dataset(images, recipe, 3, training=False)])
    assert got == [0, 1, 2, 4, 5, 6] and labels.tolist() == [0, 1, 0, 0, 1, 0]
    assert caplog.text.count("skipped 1 unusable image(s): 03.png") == 2  # one per pass


def test_streamed_training_repeats_with_the_seed(tmp_path):
    paths = _photos(tmp_path / "a", 10)
    images = ImageSet(["a", "b"], paths, [i % 2 for i in range(10)], tmp_path)
    recipe = Preprocessing().with_input_size(24)

    def two_epochs(seed):
        ds = make_dataset(images, recipe, 4, True, seed)
        return [np.concatenate([x.numpy() for x, _ in ds]) for _ in range(2)]

    first, again = two_epochs(0), two_epochs(0)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])


def test_cache_cut_and_views():
    from edgetl import zoo
    from edgetl.training import unfreeze
    from edgetl.training.cache import cut_layer, view_stack

    base = zoo.get("mobilenet_v2").build("none", 96)
    names = unfreeze(base, 5)
    # block_15 has a residual from block_14_add: the cut is there, not inside block 15.
    assert names[0] == "block_15_project" and cut_layer(base, names[0]) == "block_14_add"
    canvas = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    views = view_stack(canvas, (24, 24), 4, seed=0, index=7)
    assert views.shape == (4, 24, 24, 3)
    np.testing.assert_array_equal(views[0], canvas[4:28, 4:28])
    np.testing.assert_array_equal(views[1], views[0][:, ::-1])
    np.testing.assert_array_equal(views, view_stack(canvas, (24, 24), 4, seed=0, index=7))
    assert not np.array_equal(views[2:], view_stack(canvas, (24, 24), 4, seed=0, index=8)[2:])


def test_early_stopping_restores_the_best_epoch_and_smoothing_runs(sample_subset, tmp_path):
    """Head epochs from the cache are cheap: 12 epochs at a high rate overfit 16 photos, and the model
    written is the best val-loss epoch's (what the cached head saw equals the saved model's val loss)."""
    config = dict(data=sample_subset(8), backbone="efficientnet_lite0", weights="imagenet", strategy="features",
                  input_size=96, epochs=12, lr=0.02, patience=2, verbose=False)
    result = finetune(FinetuneConfig(out=tmp_path / "m", **config))
    losses = [h["val_loss"] for h in result.history]
    assert len(losses) < 12 and losses.index(min(losses)) == len(losses) - 3  # stopped 2 epochs after the best
    assert result.metadata["metrics"]["val_loss"] == pytest.approx(min(losses), abs=1e-4)
    smoothed = finetune(FinetuneConfig(out=tmp_path / "s", **{**config, "patience": 0, "epochs": 2},
                                       label_smoothing=0.1, weight_decay=1e-3))
    assert smoothed.history[-1]["loss"] > 0.1 * np.log(2) / 2  # smoothing keeps the training loss off 0
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [".edgetl-output.json", "edgetl.json",
                                                                    "model.keras", "training.png"]


@pytest.fixture(scope="module")
def flowers_subset(tmp_path_factory) -> Path:
    if not FLOWERS.is_dir():
        pytest.skip(f"flowers photos not found at {FLOWERS} (the ../shared data folder is absent)")
    root = tmp_path_factory.mktemp("flowers") / "data"
    for name in sorted(p.name for p in FLOWERS.iterdir() if p.is_dir()):
        (root / name).mkdir(parents=True)
        for path in sorted((FLOWERS / name).glob("*.jpg"))[:12]:
            shutil.copyfile(path, root / name / path.name)
    return root


def test_five_flower_classes_in_order_with_per_class_sense(flowers_subset, tmp_path):
    """Five classes catch label-order and per-class bugs that two do not: labels in folder order, and
    every class is the top prediction for most of its own photos (ImageNet Lite0 features at 96 px)."""
    from edgetl.data import load_inputs, scan_folder

    result = finetune(FinetuneConfig(data=flowers_subset, out=tmp_path / "m", backbone="efficientnet_lite0",
                                     weights="imagenet", strategy="features", input_size=96, epochs=8,
                                     lr=3e-3, verbose=False))
    model, metadata = load_trained(result.model_dir)
    assert metadata["labels"] == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    images = scan_folder(flowers_subset)
    recipe = Preprocessing.from_dict(metadata["preprocessing"])
    predicted = model.predict(load_inputs(images.paths, recipe), verbose=0).argmax(1)
    labels = np.asarray(images.labels)
    recall = [float((predicted[labels == c] == c).mean()) for c in range(5)]
    assert min(recall) >= 0.5, recall
    assert metadata["metrics"]["val_accuracy"] >= 0.5
