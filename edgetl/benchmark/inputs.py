"""What the artifacts are fed: the data folder's images, decoded and normalised once per recipe, in
batches; labels matched by name."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import UsageError
from ..preprocess import Preprocessing
from ..timing import time_runs, timing_stats

if TYPE_CHECKING:
    from .config import Artifact

log = logging.getLogger("edgetl")


def label_indices(data_classes: list[str], artifact_labels: list[str], artifact: Path | str) -> np.ndarray:
    """Data folder class names -> the artifact's label indices (by name, never by position)."""
    missing = [c for c in data_classes if c not in artifact_labels]
    if missing:
        raise UsageError(f"{artifact}: data classes {', '.join(missing)} are not among its labels "
                         f"({', '.join(artifact_labels)})")
    return np.asarray([artifact_labels.index(c) for c in data_classes], np.int64)


class InputCache:
    """Decoded pixels per recipe (resize+crop), normalised floats per recipe; each timed once."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self._pixels: dict[str, np.ndarray] = {}
        self._floats: dict[str, np.ndarray] = {}
        self._transposed: dict[tuple, np.ndarray] = {}
        self.timings: dict[str, dict[str, float]] = {}

    def pixels(self, recipe: Preprocessing) -> np.ndarray:
        from ..data import load_pixels

        key = json.dumps(recipe.to_dict(), sort_keys=True)
        if key not in self._pixels:
            start = time.perf_counter()
            self._pixels[key] = load_pixels(self.paths, recipe)
            self._timing(key)["decode_resize_crop_ms_per_image"] = (time.perf_counter() - start) * 1e3 / len(self.paths)
        return self._pixels[key]

    def floats(self, recipe: Preprocessing) -> np.ndarray:
        key = json.dumps(recipe.to_dict(), sort_keys=True)
        pixels = self.pixels(recipe)
        if key not in self._floats:
            start = time.perf_counter()
            self._floats[key] = recipe.normalize(pixels)
            self._timing(key)["normalize_ms_per_image"] = (time.perf_counter() - start) * 1e3 / len(self.paths)
        return self._floats[key]

    def inputs_for(self, artifact: Artifact) -> np.ndarray:
        inputs = self.pixels(artifact.recipe) if artifact.takes_uint8 else self.floats(artifact.recipe)
        if str(artifact.sidecar.get("input", {}).get("layout", "NHWC")).upper() != "NCHW":
            return inputs
        key = ("nchw", artifact.takes_uint8, json.dumps(artifact.recipe.to_dict(), sort_keys=True))
        if key not in self._transposed:  # an NCHW artifact (ONNX from PyTorch): transposed once
            self._transposed[key] = np.ascontiguousarray(inputs.transpose(0, 3, 1, 2))
        return self._transposed[key]

    def _timing(self, key: str) -> dict[str, float]:
        return self.timings.setdefault(key, {"recipe": json.loads(key), "images": len(self.paths)})


def batch_of(inputs: np.ndarray, size: int) -> np.ndarray:
    """The first ``size`` images, repeated when the data set is smaller than the batch."""
    reps = -(-size // len(inputs))
    return np.ascontiguousarray(np.concatenate([inputs] * reps)[:size] if reps > 1 else inputs[:size])


def run_all(backend, inputs: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([backend.run(np.ascontiguousarray(inputs[i:i + batch]))
                           for i in range(0, len(inputs), batch)])


def pad_to_multiple(inputs: np.ndarray, multiple: int) -> np.ndarray:
    """The inputs plus copies of the first image up to a multiple of ``multiple`` (fixed-batch graphs)."""
    extra = -len(inputs) % multiple
    return np.concatenate([inputs, inputs[:1].repeat(extra, 0)]) if extra else inputs


def timed_latency(backend, batch: np.ndarray, runs: int, warmup: int) -> dict[str, Any]:
    """``backend.run(batch)`` timed ``runs`` times after ``warmup``: the statistics and every time (ms)."""
    times = time_runs(lambda: backend.run(batch), runs, warmup)
    return {**timing_stats(times), "times_ms": times}


def scan_images(data: Path):
    """The data folder's labelled images (``data.scan_folder``); unreadable files are warned about."""
    from ..data import scan_folder, warn_skipped

    images = scan_folder(data)
    warn_skipped(images.skipped)
    return images


def data_summary(data: Path, images) -> dict[str, Any]:
    """bench.json's ``data`` block."""
    return {"root": str(Path(data).resolve()), "classes": images.classes, "n_images": len(images),
            "per_class": images.counts(), "skipped": [str(p) for p, _ in images.skipped]}


def cap_batch_sizes(batch_sizes: Sequence[int], n_images: int) -> list[int]:
    """Batch sizes above the number of images are capped to it, with a warning: a larger batch would
    only repeat the same images, at the cost of its memory and time."""
    capped = sorted({min(int(b), n_images) for b in batch_sizes})
    too_big = sorted(int(b) for b in batch_sizes if int(b) > n_images)
    if too_big:
        log.warning("--batch-sizes %s larger than the %d images of --data: capped to %d",
                    ",".join(map(str, too_big)), n_images, n_images)
    return capped
