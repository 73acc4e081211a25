"""Image-folder scanning, bad files, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.cli import main
from edgetl.data import load_splits, scan_folder, stratified_split
from edgetl.errors import UsageError
from edgetl.preprocess import Preprocessing


def _write_folder(root: Path, per_class: dict[str, int], size=(40, 30)) -> Path:
    rng = np.random.default_rng(0)
    for name, count in per_class.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}_{i:02d}.png")
    return root


def test_split_is_deterministic_and_stratified(tmp_path):
    root = _write_folder(tmp_path / "d", {"a": 10, "b": 20, "c": 5})
    images = scan_folder(root)
    train1, val1 = stratified_split(images, 0.2, seed=0)
    train2, val2 = stratified_split(scan_folder(root), 0.2, seed=0)
    assert val1.paths == val2.paths and train1.paths == train2.paths
    assert val1.counts() == {"a": 2, "b": 4, "c": 1}
    assert train1.counts() == {"a": 8, "b": 16, "c": 4}
    assert not set(train1.paths) & set(val1.paths)
    _, val3 = stratified_split(images, 0.2, seed=1)
    assert val3.paths != val1.paths


def test_presplit_folder_is_used_as_given(tmp_path):
    root = tmp_path / "d"
    _write_folder(root / "train", {"x": 4, "y": 4})
    _write_folder(root / "val", {"x": 2, "y": 1})
    train, val = load_splits(root)
    assert train.counts() == {"x": 4, "y": 4} and val.counts() == {"x": 2, "y": 1}


def test_bad_files_are_skipped_and_reported(tmp_path, caplog):
    root = _write_folder(tmp_path / "d", {"a": 3, "b": 3})
    (root / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    truncated = (root / "b" / "b_00.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(truncated[: len(truncated) // 2])
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    frames[0].save(root / "b" / "anim.gif", save_all=True, append_images=frames[1:])
    with caplog.at_level("WARNING", logger="edgetl"):
        train, val = load_splits(root, val_split=0.0)
    skipped = {p.name for p, _ in train.skipped}
    assert skipped == {"corrupt.jpg", "truncated.png", "anim.gif"}
    assert len(train) == 6
    assert "skipped 3 unusable image(s)" in caplog.text


def test_real_gif_placeholder_is_skipped(shared_photos):
    images = scan_folder(shared_photos)
    assert [p.name for p, _ in images.skipped] == ["imageNotFound.gif"]
    assert len(images) == 244


@pytest.mark.parametrize("layout, message", [
    ({"a": 3, "b": 0}, "no usable image"),
    ({"a": 3}, "at least two class"),
])
def test_bad_folders_are_one_line_errors(tmp_path, layout, message):
    root = _write_folder(tmp_path / "d", layout)
    with pytest.raises(UsageError, match=message):
        scan_folder(root)


def test_cli_bad_data_exit_2_one_line(tmp_path, capsys):
    root = _write_folder(tmp_path / "d", {"a": 3, "b": 0})
    assert main(["finetune", str(root), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no usable image" in err[0]
    assert main(["finetune", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_preprocessing_recipe(tmp_path):
    recipe = Preprocessing(input_size=(8, 8), resize_shorter=10, mean=(1, 2, 3), std=(2, 2, 2),
                           channel_order="BGR")
    image = Image.fromarray(np.full((20, 30, 3), (10, 20, 30), np.uint8))
    x = recipe.prepare(image)
    assert x.shape == (8, 8, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], [(30 - 1) / 2, (20 - 2) / 2, (10 - 3) / 2])
    assert Preprocessing.from_dict(recipe.to_dict()) == recipe
    gray = recipe.prepare(np.full((5, 7), 9, np.uint8))
    assert gray.shape == (8, 8, 3)


def test_embedded_sample_ships(sample_dir):
    images = scan_folder(sample_dir)
    assert images.classes == ["ants", "bees"] and images.counts() == {"ants": 30, "bees": 30}
    assert not images.skipped
