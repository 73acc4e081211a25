"""The Keras source: an edgetl model directory, or a ``.keras`` file trained anywhere else."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from ...errors import UsageError
from ...metadata import MODEL_METADATA
from . import foreign
from .foreign import ModelFacts


def validate(config) -> None:
    from ..keras_graph import validate_source

    size = config.input_size
    if not size and config.preprocessing is not None:
        facts = peek(config)
        size = (facts.size or (None,))[0] or config.preprocessing.crop
    validate_source(config.model, size)


def peek(config) -> ModelFacts:
    """The input size from the archive's config.json (the first InputLayer's batch_shape), no TensorFlow."""
    from ..keras_graph import resolve_model_path

    path, _ = resolve_model_path(config.model)
    try:
        with zipfile.ZipFile(path) as archive:
            layers = json.loads(archive.read("config.json"))["config"]["layers"]
        shape = next(layer["config"]["batch_shape"] for layer in layers if layer["class_name"] == "InputLayer")
    except (OSError, KeyError, StopIteration, ValueError, TypeError, zipfile.BadZipFile):
        return ModelFacts(None)
    if len(shape) != 4 or shape[-1] != 3:
        raise UsageError(f"{path}: input shape {shape} is not an NHWC RGB image batch")
    return ModelFacts(tuple(shape[1:3]) if None not in shape[1:3] else None)


def load(config):
    from ..keras_graph import load_source, resolve_model_path
    from ...training import load_keras_model

    path, directory = resolve_model_path(config.model)
    if (directory / MODEL_METADATA).exists():
        return load_source(config.model, config.input_size, list(config.labels) or None)
    return foreign_source(config, load_keras_model(path), path, "keras")


def foreign_source(config, keras_model, path: Path, kind: str):
    """A Keras model edgetl did not train: the stated recipe, given labels, its output as it is (the
    kind detected on the check images later, ``ExportJob.start``)."""
    from ..keras_graph import SourceModel
    from .. import sources

    if len(keras_model.inputs) != 1 or len(keras_model.outputs) != 1:
        raise UsageError(f"{path}: a classifier has one input and one output; this model has "
                         f"{len(keras_model.inputs)} and {len(keras_model.outputs)}")
    shape, out_shape = tuple(keras_model.inputs[0].shape), tuple(keras_model.outputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise UsageError(f"{path}: input shape {shape} is not an NHWC RGB image batch")
    if len(out_shape) != 2 or not out_shape[-1]:
        raise UsageError(f"{path}: output shape {out_shape} is not (batch, classes)")
    recipe = sources.recipe(config)
    if None not in shape[1:3] and tuple(shape[1:3]) != tuple(recipe.input_size):
        raise UsageError(f"{path}: model input is {shape[1]}x{shape[2]} but the recipe says "
                         f"{recipe.input_size[0]}x{recipe.input_size[1]}")
    names = foreign.labels(config, int(out_shape[-1]))
    return SourceModel(keras_model, path, {"backbone": None, "foreign": True}, recipe, names, None, source_kind=kind,
                       graph_softmax=ends_in_softmax(keras_model))


def ends_in_softmax(model) -> bool:
    """A Softmax layer, or a layer with ``activation="softmax"``, produces the output."""
    layer = model.layers[-1]
    while hasattr(layer, "layers") and layer.layers:  # a nested model ending the graph
        layer = layer.layers[-1]
    activation = getattr(layer, "activation", None)
    return type(layer).__name__ == "Softmax" or getattr(activation, "__name__", "") == "softmax"
