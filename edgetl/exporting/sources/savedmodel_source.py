"""The SavedModel source: a TensorFlow SavedModel directory, wrapped as a Keras model
(``keras.layers.TFSMLayer`` on its ``serving_default`` signature) and exported down the Keras path."""

from __future__ import annotations

from ...errors import UsageError
from .foreign import ModelFacts

SIGNATURE = "serving_default"


def validate(config) -> None:
    if not (config.model / "saved_model.pb").is_file():
        raise UsageError(f"{config.model}: no saved_model.pb")


def _signature(path):
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise UsageError(f"{path}: TensorFlow cannot load this SavedModel ({str(exc).splitlines()[0][:150]})") from None
    if SIGNATURE not in loaded.signatures:
        raise UsageError(f"{path}: no {SIGNATURE!r} signature (has: {', '.join(loaded.signatures) or 'none'})")
    function = loaded.signatures[SIGNATURE]
    inputs = function.structured_input_signature[1]
    outputs = function.structured_outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise UsageError(f"{path}: a classifier signature has one input and one output; {SIGNATURE} has "
                         f"{len(inputs)} and {len(outputs)}")
    return next(iter(inputs.values())), next(iter(outputs.values()))


def peek(config) -> ModelFacts:
    spec, _ = _signature(config.model)
    shape = tuple(spec.shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise UsageError(f"{config.model}: input shape {shape} is not an NHWC RGB image batch")
    return ModelFacts(tuple(shape[1:3]) if None not in shape[1:3] else None)


def load(config):
    import keras

    from .keras_source import foreign_source

    spec, _ = _signature(config.model)
    recipe_size = peek(config).size or (config.preprocessing.crop or config.input_size,) * 2
    inputs = keras.Input((*recipe_size, 3), name="image")
    layer = keras.layers.TFSMLayer(str(config.model), call_endpoint=SIGNATURE)
    outputs = layer(inputs)
    if isinstance(outputs, dict):
        outputs = next(iter(outputs.values()))
    return foreign_source(config, keras.Model(inputs, outputs, name="savedmodel"), config.model, "savedmodel")
