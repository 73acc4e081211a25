"""One decode path (``edgetl.preprocess.open_image``) for training, calibration, bench, predict and the
service: pixel cap and decompression bombs, 16-bit greyscale, EXIF orientation, alpha, and the decode
rules recorded in the recipe. Every input is made here, with Pillow (bombs: a PNG streamed through
zlib, so the test never holds the pixels its header claims)."""

from __future__ import annotations

import json
import logging
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.errors import UsageError
from edgetl.preprocess import DEFAULT_MAX_PIXELS, DecodeRules, ImageDecodeError, Preprocessing, open_image, to_pil

# Pillow warns from 89 MP up before edgetl's lower cap refuses the file; the CLI silences it.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


def bomb_png(path: Path, width: int, height: int, bit_depth: int = 8) -> Path:
    """A valid greyscale PNG of all-black rows, compressed ~1000:1: 30000x30000 at 1 bit is 109 KB,
    13000x13000 at 8 bits is 164 KB. Written row block by row block, never as a full image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" + bytes((width * bit_depth + 7) // 8)  # filter byte + one row of zeros
    packer = zlib.compressobj(9)
    data = [packer.compress(row * 256) for _ in range(height // 256)]
    data += [packer.compress(row * (height % 256)), packer.flush()]
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)  # greyscale, no interlace
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(data))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bombs")
    made = {"30k": bomb_png(root / "bomb30k.png", 30000, 30000, 1),
            "13k": bomb_png(root / "big13k.png", 13000, 13000)}
    with Image.open(made["13k"]) as image:  # a real PNG, as Pillow reads it
        assert image.size == (13000, 13000) and image.mode == "L"
    return made


@pytest.fixture(scope="module")
def bomb_folder(tmp_path_factory, sample_dir, bombs) -> Path:
    """3 ants + 3 bees from the sample, plus both bombs (one per class)."""
    root = tmp_path_factory.mktemp("bomb_folder") / "data"
    for name in ("ants", "bees"):
        (root / name).mkdir(parents=True)
        for photo in sorted((sample_dir / name).iterdir())[:3]:
            shutil.copy(photo, root / name / photo.name)
    shutil.copy(bombs["30k"], root / "ants" / "bomb.png")
    shutil.copy(bombs["13k"], root / "bees" / "big.png")
    return root


@pytest.fixture(scope="module")
def onnx_artifact(cnn_artifacts) -> Path:
    """The small CNN's FP32 ONNX artifact (conftest's session export; read-only)."""
    return cnn_artifacts.paths["onnx"]


# -- pixel cap ------------------------------------------------------------------------------------
def test_bombs_are_refused_from_the_header(bombs):
    assert bombs["30k"].stat().st_size < 120_000 and bombs["13k"].stat().st_size < 200_000
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        open_image(bombs["30k"])
    with pytest.raises(ImageDecodeError, match=r"13000x13000 is 169,000,000 pixels, over the 40,000,000-pixel cap"):
        open_image(bombs["13k"])
    assert time.perf_counter() - start < 1.0  # nothing decoded: header only
    assert DecodeRules().max_pixels == DEFAULT_MAX_PIXELS == 40_000_000


def test_pixel_cap_is_configurable_and_jpegs_over_it_decode_smaller(tmp_path):
    png = tmp_path / "grey.png"
    Image.new("L", (3000, 2000), 90).save(png)
    assert open_image(png).size == (3000, 2000)
    with pytest.raises(ImageDecodeError, match="over the 5,000,000-pixel cap"):
        open_image(png, DecodeRules(max_pixels=5_000_000))
    jpeg = tmp_path / "photo.jpg"
    Image.new("RGB", (4000, 3000), (30, 140, 220)).save(jpeg, quality=92)
    assert open_image(jpeg).size == (4000, 3000)
    with Image.open(png) as lazy:  # an opened, not yet decoded image gets the cap too
        with pytest.raises(ImageDecodeError, match="over the 5,000,000-pixel cap"):
            to_pil(lazy, DecodeRules(max_pixels=5_000_000))
    half = open_image(jpeg, DecodeRules(max_pixels=4_000_000))  # libjpeg's DCT scaling, not a refusal
    quarter = open_image(jpeg, DecodeRules(max_pixels=1_000_000))
    assert half.size == (2000, 1500) and quarter.size == (1000, 750)
    assert np.abs(np.asarray(half, np.int16) - (30, 140, 220)).max() <= 3
    with pytest.raises(ImageDecodeError, match="pixel cap"):  # 1/8 is as small as libjpeg goes
        open_image(jpeg, DecodeRules(max_pixels=100_000))


def test_bomb_in_a_folder_is_skipped_by_every_verb(bomb_folder, onnx_artifact, tmp_path, caplog, capsys):
    """finetune (the real CLI), calibration, bench (the real CLI) and predict skip both bombs with the
    usual warning and still use the six good photos."""
    from edgetl.cli import main
    from edgetl.data import load_splits
    from edgetl.exporting.calibration import load_calibration

    with caplog.at_level(logging.WARNING, logger="edgetl"):
        train, val = load_splits(bomb_folder, 0.2, 0)
    assert len(train) + len(val) == 6
    assert "skipped 2 unusable image(s): bomb.png (refused as a decompression bomb" in caplog.text
    assert "big.png (13000x13000 is 169,000,000 pixels, over the 40,000,000-pixel cap" in caplog.text
    caplog.clear()

    with caplog.at_level(logging.WARNING, logger="edgetl"):
        calib = load_calibration(bomb_folder, Preprocessing().with_input_size(32), size=8)
    assert len(calib) == 6 and calib.pixels.shape == (6, 32, 32, 3)
    assert "skipped 2 unusable image(s)" in caplog.text
    caplog.clear()

    assert main(["finetune", str(bomb_folder), "--out", str(tmp_path / "model"), "--backbone",
                 "mobilenet_v3_small", "--weights", "none", "--epochs", "1", "--input-size", "32",
                 "--batch-size", "4"]) == 0
    metadata = json.loads((tmp_path / "model" / "edgetl.json").read_text())
    assert metadata["preprocessing"]["decode"] == DecodeRules().to_dict()
    assert "skipped 2 unusable image(s)" in caplog.text
    caplog.clear()

    capsys.readouterr()
    assert main(["bench", str(onnx_artifact), "--data", str(bomb_folder), "--out", str(tmp_path / "bench"),
                 "--runs", "2", "--warmup", "0", "--batch-sizes", "1"]) == 0
    data = json.loads((tmp_path / "bench" / "bench.json").read_text())["data"]
    assert data["n_images"] == 6 and sorted(Path(p).name for p in data["skipped"]) == ["big.png", "bomb.png"]
    assert "skipped 2 unusable image(s)" in caplog.text
    capsys.readouterr()

    assert main(["predict", str(onnx_artifact), str(bomb_folder)]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 6
    assert err.count("edgetl: warning: skipped") == 2 and "bomb.png" in err and "big.png" in err

    assert main(["predict", str(onnx_artifact), str(bomb_folder / "ants" / "bomb.png")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "decompression bomb" in err


# -- pixels ---------------------------------------------------------------------------------------
def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path, onnx_artifact):
    from edgetl.data import load_pixels
    from edgetl.runtime import EdgeModel

    samples = np.tile(np.array([0, 255, 256, 32768, 65535], np.uint16), (5, 1))
    path = tmp_path / "grey16.png"
    Image.fromarray(samples).save(path)
    with Image.open(path) as raw:
        assert raw.mode == "I;16"
    expected = np.array([0, 0, 1, 128, 255], np.uint8)  # the high byte
    decoded = np.asarray(open_image(path))
    assert decoded.shape == (5, 5, 3) and (decoded == expected[None, :, None]).all()
    np.testing.assert_array_equal(np.asarray(to_pil(samples)), decoded)  # a uint16 array: the same rule
    big_endian = Image.frombytes("I;16B", (5, 5), samples.astype(">u2").tobytes())
    np.testing.assert_array_equal(np.asarray(to_pil(big_endian)), decoded)

    flat = tmp_path / "mid_grey16.png"  # what training, eval and the runtime all see: grey 128, not white
    Image.fromarray(np.full((40, 50), 32768, np.uint16)).save(flat)
    recipe = Preprocessing().with_input_size(32)
    assert (load_pixels([flat], recipe) == 128).all()
    assert (load_pixels([flat], recipe, training=True) == 128).all()
    model = EdgeModel.load(onnx_artifact)
    np.testing.assert_allclose(model.prepare(flat), model.prepare(Image.new("RGB", (50, 40), (128,) * 3)))


def test_exif_orientation_is_applied(tmp_path):
    upright = Image.new("RGB", (64, 48), (0, 160, 0))
    upright.paste((255, 0, 0), (0, 0, 32, 24))
    upright.paste((0, 0, 255), (32, 24, 64, 48))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # how a phone stores a portrait: sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    stored.save(tmp_path / "rotated.png", exif=exif)
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    upright.save(tmp_path / "upright.jpg", quality=95)

    np.testing.assert_array_equal(np.asarray(open_image(tmp_path / "rotated.png")), np.asarray(upright))
    rotated, straight = (np.asarray(open_image(tmp_path / n), np.int16) for n in ("rotated.jpg", "upright.jpg"))
    assert rotated.shape == straight.shape == (48, 64, 3)
    assert np.abs(rotated - straight).mean() < 1.0  # JPEG noise only
    ignored = np.asarray(open_image(tmp_path / "rotated.png", DecodeRules(exif_transpose=False)))
    assert ignored.shape == (64, 48, 3)  # the rule off: the stored, sideways pixels
    pil = Image.open(tmp_path / "rotated.png")  # an opened PIL image gets the same rule, and is not changed
    np.testing.assert_array_equal(np.asarray(to_pil(pil)), np.asarray(upright))
    assert pil.size == (48, 64)


def test_alpha_is_composited_on_the_recorded_background(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (200, 40, 0, 128))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black: white, not black
    rgba.save(tmp_path / "rgba.png")
    decoded = np.asarray(open_image(tmp_path / "rgba.png"))
    assert tuple(decoded[0, 0]) == (255, 255, 255)
    np.testing.assert_allclose(decoded[1, 1], [200 * 128 / 255 + 127, 40 * 128 / 255 + 127, 127], atol=1)
    black = np.asarray(open_image(tmp_path / "rgba.png", DecodeRules(alpha_background=(0, 0, 0))))
    assert tuple(black[0, 0]) == (0, 0, 0)
    np.testing.assert_array_equal(np.asarray(to_pil(np.asarray(rgba))), decoded)  # HxWx4 array

    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 10, 200, 10])
    palette.putpixel((1, 1), 1)
    palette.save(tmp_path / "palette.png", transparency=0)
    Image.new("LA", (4, 4), (100, 0)).save(tmp_path / "la.png")
    decoded = np.asarray(open_image(tmp_path / "palette.png"))
    assert tuple(decoded[0, 0]) == (255, 255, 255) and tuple(decoded[1, 1]) == (10, 200, 10)
    assert (np.asarray(open_image(tmp_path / "la.png")) == 255).all()


def test_training_pipeline_sees_the_same_pixels_as_the_runtime(tmp_path):
    """finetune feeds tf.data with ``load_pixels`` (Pillow, this decode path), never tf.io/tf.image
    decoders: its normalised eval batches equal ``Preprocessing.prepare`` on the files."""
    from edgetl.data import ImageSet, make_dataset

    exif = Image.Exif()
    exif[0x0112] = 8
    paths = [tmp_path / "grey16.png", tmp_path / "alpha.png", tmp_path / "rotated.jpg"]
    Image.fromarray(np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)).save(paths[0])
    Image.new("RGBA", (40, 30), (250, 10, 10, 60)).save(paths[1])
    gradient = np.linspace(0, 255, 40 * 30 * 3).reshape(30, 40, 3).astype(np.uint8)
    Image.fromarray(gradient).save(paths[2], exif=exif, quality=95)
    recipe = Preprocessing().with_input_size(24)
    images = ImageSet(["a", "b"], paths, [0, 1, 0], tmp_path)
    batch = next(iter(make_dataset(images, recipe, batch_size=3, training=False)))[0].numpy()
    np.testing.assert_allclose(batch, np.stack([recipe.prepare(p) for p in paths]), atol=1e-6)
    assert batch[1].min() > 0.3  # mostly white background, not the black an alpha drop would give


# -- the recipe -----------------------------------------------------------------------------------
def test_recipe_records_and_round_trips_its_decode_rules(onnx_artifact):
    from edgetl.metadata import read_sidecar
    from edgetl.runtime import EdgeModel

    recipe = Preprocessing().with_input_size(96)
    data = json.loads(json.dumps(recipe.to_dict()))
    assert data["decode"] == {"exif_transpose": True, "alpha_background": [255, 255, 255],
                              "high_bit_depth": "high_byte", "max_pixels": 40_000_000}
    assert Preprocessing.from_dict(data) == recipe
    custom = Preprocessing(decode=DecodeRules(exif_transpose=False, alpha_background=(0, 0, 0), max_pixels=1000))
    assert Preprocessing.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom
    old = {k: v for k, v in data.items() if k != "decode"}  # written before the rules were recorded
    assert Preprocessing.from_dict(old).decode == DecodeRules()
    with pytest.raises(UsageError, match="high_bit_depth"):
        Preprocessing.from_dict({**data, "decode": {"high_bit_depth": "clip"}})
    with pytest.raises(UsageError, match="alpha_background"):
        DecodeRules.from_dict({"alpha_background": [255, 255]})
    assert read_sidecar(onnx_artifact)["preprocessing"]["decode"] == DecodeRules().to_dict()
    assert EdgeModel.load(onnx_artifact).recipe.decode == DecodeRules()
