"""Calibration images for post-training quantization: scan, choose, fingerprint, feed.

The set is chosen deterministically (sorted paths, evenly spaced when the folder holds more than
``size`` images), so the same folder and size always give the same artifact. Its manifest (per-file
sha256 + combined fingerprint, ``edgetl.metadata.fingerprint_files``) is written as ``calibration.json``
next to the artifacts and its fingerprint goes into every sidecar.

Images are decoded once into uint8 (N x H x W x 3: 300 images at 224 px are 45 MB) and normalised
chunk by chunk while a quantizer pulls them, so float copies of the whole set never sit in memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..data import load_pixels, scan_unlabelled, warn_skipped
from ..errors import UsageError
from ..metadata import fingerprint_files
from ..preprocess import Preprocessing

log = logging.getLogger("edgetl")

DEFAULT_SIZE = 300
CHUNK = 16  # images per calibration batch handed to a quantizer


@dataclass
class CalibrationSet:
    root: Path
    paths: list[Path]
    pixels: np.ndarray  # uint8 N x H x W x 3, resized/cropped by the recipe
    recipe: Preprocessing
    manifest: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    def summary(self) -> dict[str, Any]:
        """What a sidecar records (the full file list lives in calibration.json)."""
        return {"fingerprint": self.fingerprint, "count": len(self), "manifest": "calibration.json"}

    def batches(self, input_dtype: str = "float32", chunk: int = CHUNK) -> Iterator[np.ndarray]:
        """Model inputs in chunks: normalised float32, raw uint8 pixels, or raw pixels as float32
        (``"pixels_float"``, for graphs that normalise inside but take a float tensor)."""
        for start in range(0, len(self), chunk):
            yield prepare_batch(self.pixels[start:start + chunk], self.recipe, input_dtype)


def prepare_batch(pixels: np.ndarray, recipe: Preprocessing, input_dtype: str) -> np.ndarray:
    if input_dtype == "uint8":
        return pixels
    if input_dtype == "pixels_float":
        return pixels.astype(np.float32)
    if input_dtype == "float32_nchw":  # an NCHW model (ONNX from PyTorch)
        return np.ascontiguousarray(recipe.normalize(pixels).transpose(0, 3, 1, 2))
    return recipe.normalize(pixels)


def choose(paths: list[Path], size: int) -> list[Path]:
    """Evenly spaced over the sorted list: a folder sorted by class gives every class its share."""
    if len(paths) <= size:
        return list(paths)
    picks = np.linspace(0, len(paths) - 1, size).round().astype(int)
    return [paths[i] for i in sorted(set(picks.tolist()))]


def load_calibration(root: str | Path, recipe: Preprocessing, size: int = DEFAULT_SIZE) -> CalibrationSet:
    root = Path(root)
    if size < 1:
        raise UsageError(f"--calib-size must be >= 1, got {size}")
    if not root.is_dir():
        raise UsageError(f"calibration folder {root} does not exist")
    usable, skipped = scan_unlabelled(root)
    warn_skipped(skipped)
    if not usable:
        raise UsageError(f"calibration folder {root} has no usable image")
    chosen = choose(usable, size)
    if len(chosen) < size:
        log.warning("calibrating on %d image(s), fewer than --calib-size %d; INT8 ranges from few images "
                    "clip unseen inputs (a few hundred representative images are recommended)",
                    len(chosen), size)
    manifest = fingerprint_files(chosen, root=root)
    manifest = {"schema": "edgetl.calibration/1", "root": str(root.resolve()), "requested_size": size,
                "input_size": list(recipe.input_size), **manifest}
    return CalibrationSet(root, chosen, load_pixels(chosen, recipe), recipe, manifest)


def ort_data_reader(calib: CalibrationSet, input_name: str, input_dtype: str, chunk: int = CHUNK):
    """An onnxruntime ``CalibrationDataReader`` feeding the set in chunks of ``chunk`` images."""
    from onnxruntime.quantization import CalibrationDataReader

    class ChunkedReader(CalibrationDataReader):
        def __init__(self):
            self._batches = calib.batches(input_dtype, chunk)

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

        def rewind(self):
            self._batches = calib.batches(input_dtype, chunk)

    return ChunkedReader()
