"""Frozen work done once (the bottleneck cache of TensorFlow's ``retrain.py``).

A head-only phase never changes the backbone, so running it over every photo in every epoch repeats the
same work. Instead each training photo is decoded once, cut into ``views`` fixed views (0: centre crop,
1: its mirror, 2..: seeded random crops, flipped at random) and sent through the frozen backbone once
per view. What is kept, on disk in the output's staging area (``np.memmap``; memory holds a batch):

* the pooled backbone output per view (what pool -> dropout -> logits sees): every head-only epoch
  trains on these, each photo once per epoch in a seeded random view;
* for ``freeze``, also the activation at the cut (the last point before the first trained layer where
  the graph has a single edge, e.g. ``block2b_add`` of EfficientNet-Lite0 for the top 40 layers), in
  float16: the second phase trains the layers above the cut from there.

Validation photos are cached once, at the runtime's eval crop. The model trained is the classifier
itself (the sub-models below share its layers), so ``model.keras`` and its graph are as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..console import progress, say
from ..data import ImageSet
from ..preprocess import Preprocessing
from ..streaming import batched, decoded

EXTRACT_BATCH = 32  # photos per forward pass (x views)


@dataclass
class CachedSplit:
    features: np.ndarray  # float32 N x K x C memmap: pooled backbone output per view
    boundary: np.ndarray | None  # float16 N x K x h x w x c memmap: activation at the cut / its scale
    scale: np.ndarray | None  # float32 N x K: each boundary view's max |value| (float16 keeps ratios, not
    # magnitudes: an untrained backbone's activations of 1e-9 would all round to 0)
    labels: np.ndarray  # int32 N
    rows: np.ndarray  # indices of the photos that decoded (a file can go bad mid-stream)


@dataclass
class FrozenCache:
    train: CachedSplit
    val: CachedSplit | None
    cut: str | None
    seconds: float
    images_per_second: float


def cut_layer(backbone, first_trained: str) -> str | None:
    """The last layer before ``first_trained`` whose output is the only edge from the layers before it to
    the layers after it (no skip connection crosses it); None if there is none."""
    layers = backbone.layers
    position = {id(layer): i for i, layer in enumerate(layers)}
    reads = []
    for layer in layers:
        sources = set()
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                source = tensor._keras_history.operation
                if id(source) in position:
                    sources.add(position[id(source)])
        reads.append(sources)
    stop = next(i for i, layer in enumerate(layers) if layer.name == first_trained)
    for j in range(stop - 1, 0, -1):
        if all(s >= j for later in reads[j + 1:] for s in later):
            return layers[j].name
    return None


def view_stack(canvas: np.ndarray, size: tuple[int, int], views: int, seed: int, index: int) -> np.ndarray:
    """``views`` crops of one training canvas (K x H x W x 3); random ones seeded by (seed, photo), so
    they do not depend on thread or batch order."""
    height, width = size
    top, left = (canvas.shape[0] - height) // 2, (canvas.shape[1] - width) // 2
    centre = canvas[top:top + height, left:left + width]
    out = [centre, centre[:, ::-1]][:views]
    rng = np.random.default_rng([seed, index])
    for _ in range(views - len(out)):
        y = int(rng.integers(0, canvas.shape[0] - height + 1))
        x = int(rng.integers(0, canvas.shape[1] - width + 1))
        crop = canvas[y:y + height, x:x + width]
        out.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return np.stack(out)


def build_cache(backbone, cut: str | None, train_set: ImageSet, val_set: ImageSet, recipe: Preprocessing,
                views: int, seed: int, directory: Path, verbose: bool = True) -> FrozenCache:
    """Run the frozen backbone once per view over the training photos (once over val) into ``directory``."""
    import keras

    outputs = [keras.layers.GlobalAveragePooling2D()(backbone.output)]
    if cut:
        outputs.append(backbone.get_layer(cut).output)
    extractor = _traced_once(keras.Model(backbone.input, outputs), recipe)
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train = _extract(extractor, train_set, recipe, views, seed, directory / "train", True, verbose)
    val = _extract(extractor, val_set, recipe, 1, seed, directory / "val", False, verbose) if len(val_set) else None
    seconds = time.perf_counter() - started
    done = len(train.rows) * views + (len(val.rows) if val else 0)
    rate = done / max(seconds, 1e-9)
    say(f"[cache] frozen backbone run once: {len(train.rows)} photos x {views} view(s) + {len(val_set)} val "
        f"in {seconds:.1f}s ({rate:.1f} images/s)", verbose)
    return FrozenCache(train, val, cut, seconds, rate)


def _traced_once(model, recipe: Preprocessing):
    """The extractor as one tf.function for every batch size (train views, last batch, val): each new
    shape would otherwise cost a trace of the whole backbone, which dominated small data sets."""
    import tensorflow as tf

    function = tf.function(lambda x: model(x, training=False), reduce_retracing=True,
                           input_signature=[tf.TensorSpec((None, *recipe.input_size, 3), tf.float32)])

    def run(x):
        out = function(tf.constant(x))
        return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]

    run.shapes = [tuple(o.shape[1:]) for o in model.outputs]
    return run


def _extract(extractor, images: ImageSet, recipe: Preprocessing, views: int, seed: int, stem: Path,
             training: bool, verbose: bool) -> CachedSplit:
    from numpy.lib.format import open_memmap

    n = len(images)
    shapes = extractor.shapes
    features = open_memmap(f"{stem}_features.npy", "w+", np.float32, (n, views, *shapes[0]))
    boundary = open_memmap(f"{stem}_boundary.npy", "w+", np.float16, (n, views, *shapes[1])) if len(shapes) > 1 else None
    scale = np.ones((n, views), np.float32)
    done = np.zeros(n, bool)
    what = f"caching frozen features ({'train' if training else 'val'}, {views} view(s))"
    with progress(n, what, enabled=verbose) as bar:
        for index, pixels in batched(decoded(images.paths, recipe, training), EXTRACT_BATCH):
            if training:
                pixels = np.stack([view_stack(p, recipe.input_size, views, seed, int(i)) for p, i in zip(pixels, index)])
            else:
                pixels = pixels[:, None]
            out = extractor(recipe.normalize(pixels.reshape(-1, *pixels.shape[2:])))
            features[index] = np.asarray(out[0]).reshape(len(index), views, *shapes[0])
            if boundary is not None:
                cut = np.asarray(out[1]).reshape(len(index), views, *shapes[1])
                peak = np.abs(cut).reshape(len(index), views, -1).max(-1)
                peak[peak == 0] = 1.0
                scale[index] = peak
                boundary[index] = (cut / peak.reshape(*peak.shape, *[1] * len(shapes[1]))).astype(np.float16)
            done[index] = True
            bar.advance(len(index))
    rows = np.flatnonzero(done)
    return CachedSplit(features, boundary, scale if boundary is not None else None,
                       np.asarray(images.labels, np.int32), rows)


def cached_dataset(split: CachedSplit, source: str, batch_size: int, training: bool, seed: int = 0):
    """tf.data of (cached ``features`` or ``boundary`` as float32, label): training passes take every photo
    once, in a seeded order and a seeded view that differ per epoch; eval passes go in order, view 0."""
    import tensorflow as tf

    array = split.features if source == "features" else split.boundary
    views = array.shape[1]
    passes = [0]

    def generate():
        rows, chosen = split.rows, np.zeros(len(split.rows), np.int64)
        if training:
            rng = np.random.default_rng([seed, 24, passes[0]])
            passes[0] += 1
            rows = rng.permutation(split.rows)
            chosen = rng.integers(0, views, len(rows))
        for start in range(0, len(rows), batch_size):
            index, view = rows[start:start + batch_size], chosen[start:start + batch_size]
            x = np.asarray(array[index, view], np.float32)
            if source != "features":
                x *= split.scale[index, view].reshape(-1, *[1] * (x.ndim - 1))
            yield x, split.labels[index]

    signature = (tf.TensorSpec((None, *array.shape[2:]), tf.float32), tf.TensorSpec((None,), tf.int32))
    steps = -(-len(split.rows) // batch_size)  # known, so Keras does not warn that the data "ran out"
    ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
    return ds.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(2)


def head_trainer(model):
    """pooled features -> the classifier's own dropout -> logits -> probabilities (shared layers)."""
    import keras

    features = keras.Input(model.get_layer("pool").output.shape[1:], name="pooled")
    x = model.get_layer("dropout")(features)
    return keras.Model(features, model.get_layer("probabilities")(model.get_layer("logits")(x)), name="head")


def top_trainer(model, backbone, cut: str):
    """activation at the cut -> the backbone's layers above it -> the head (all shared with ``model``)."""
    import keras

    top = keras.Model(backbone.get_layer(cut).output, backbone.output, name="backbone_top")
    boundary = keras.Input(backbone.get_layer(cut).output.shape[1:], name="boundary")
    x = top(boundary, training=False)
    x = model.get_layer("dropout")(model.get_layer("pool")(x))
    return keras.Model(boundary, model.get_layer("probabilities")(model.get_layer("logits")(x)), name="top")
