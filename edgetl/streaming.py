"""Images decoded in parallel through a bounded window: memory holds a few batches, never the data set.

``prefetch_map`` is the one mechanism: a thread pool runs ``fn`` over the items in order with at most
``window`` results in flight (Pillow releases the GIL while it decodes and resizes, so threads scale).
``decoded`` applies the one decode path (``preprocess.open_image`` + the recipe's resize/crop) to
paths and skips a file that stopped being usable since the folder scan (changed, removed, over the
pixel cap), with the usual one warning per pass. tf.data pipelines (``data.make_dataset``) and the
frozen-feature cache (``training/cache.py``) both read through it.
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from .preprocess import ImageDecodeError, Preprocessing, open_image

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    return max(2, min(8, os.cpu_count() or 2))


def prefetch_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None,
                 window: int | None = None) -> Iterator[R]:
    """``map(fn, items)`` in order, on ``workers`` threads, with at most ``window`` results pending
    (``Executor.map`` would submit every item at once and hold all results)."""
    workers = workers or default_workers()
    window = window or 4 * workers
    pending: collections.deque = collections.deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="edgetl-decode") as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # a consumer that stops early: drop what was queued
            for future in pending:
                future.cancel()


def canvas_size(recipe: Preprocessing, training: bool) -> tuple[int, int] | None:
    """Training keeps a square canvas at the resize size so random crops can be taken from it; eval
    uses the recipe itself (shorter side to resize_shorter, centre crop: the runtime's path)."""
    if training and recipe.resize_shorter:
        return (recipe.resize_shorter, recipe.resize_shorter)
    return None


def decode_one(path: Path, recipe: Preprocessing, training: bool = False) -> np.ndarray:
    """uint8 H x W x 3 through the one decode path; ``ImageDecodeError`` when unusable."""
    return recipe.resize_and_crop(open_image(path, recipe.decode), canvas_size(recipe, training))


def decoded(paths: Sequence[Path], recipe: Preprocessing, training: bool = False,
            order: Sequence[int] | None = None, workers: int | None = None,
            skipped: list | None = None, warn: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """(index, uint8 pixels) for ``paths`` (in ``order`` if given), decoded in parallel; unusable
    files are left out and reported once at the end of the pass (``warn``; also appended to ``skipped``)."""
    from .data import warn_skipped

    def load(index: int):
        try:
            return index, decode_one(paths[index], recipe, training), None
        except ImageDecodeError as exc:
            return index, None, str(exc).split(": ", 1)[-1]

    bad = []
    for index, pixels, reason in prefetch_map(load, range(len(paths)) if order is None else order, workers):
        if pixels is None:
            bad.append((Path(paths[index]), reason))
            continue
        yield index, pixels
    if bad:
        if warn:
            warn_skipped(bad)
        if skipped is not None:
            skipped.extend(bad)


def batched(stream: Iterable[tuple[int, np.ndarray]], size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices, stacked pixels) batches of ``size`` from a ``decoded`` stream."""
    indices, rows = [], []
    for index, pixels in stream:
        indices.append(index)
        rows.append(pixels)
        if len(rows) == size:
            yield np.asarray(indices), np.stack(rows)
            indices, rows = [], []
    if rows:
        yield np.asarray(indices), np.stack(rows)
