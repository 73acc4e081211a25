"""Model assembly: the classifier on one backbone, the stack of several, and which layers train.

BatchNormalization layers stay frozen and in inference mode in every phase (see ``unfreeze``), which is
what keeps fine-tuning on a small data set from wrecking the pretrained statistics.
"""

from __future__ import annotations

import dataclasses

from .. import zoo
from ..preprocess import Preprocessing
from .config import LOGITS_LAYER


def build_classifier(backbone_model, recipe: Preprocessing, n_classes: int, dropout: float, seed: int = 0):
    """Input -> backbone (inference-mode BN) -> pooling -> dropout -> logits -> softmax."""
    import keras

    inputs = keras.Input((*recipe.input_size, 3), name="image")
    features = backbone_model(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    x = keras.layers.Dropout(dropout, seed=seed, name="dropout")(x)
    logits = keras.layers.Dense(n_classes, name=LOGITS_LAYER)(x)
    outputs = keras.layers.Softmax(name="probabilities")(logits)
    return keras.Model(inputs, outputs, name="classifier")


def build_stack(names: list[str], weights: str, n_classes: int, dropout: float, seed: int = 0):
    """Several frozen backbones, one classifier each, probabilities averaged; raw-pixel input."""
    import keras

    from ..layers import normalization_layer

    specs = [zoo.get(n) for n in names]
    size = max(s.input_size for s in specs)
    recipe = dataclasses.replace(specs[0].recipe(size), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                                 channel_order="RGB")
    inputs = keras.Input((size, size, 3), name="image")
    branch_outputs = []
    for spec in specs:
        x = inputs
        if spec.input_size != size:
            x = keras.layers.Resizing(spec.input_size, spec.input_size, name=f"{spec.name}_resize")(x)
        x = normalization_layer(spec.preprocessing, name=f"{spec.name}_normalize")(x)
        base = spec.build(weights)
        base.name = f"{spec.name}_backbone"
        base.trainable = False
        x = base(x, training=False)
        x = keras.layers.GlobalAveragePooling2D(name=f"{spec.name}_pool")(x)
        x = keras.layers.Dropout(dropout, seed=seed, name=f"{spec.name}_dropout")(x)
        x = keras.layers.Dense(n_classes, name=f"{spec.name}_logits")(x)
        branch_outputs.append(keras.layers.Softmax(name=f"{spec.name}_probabilities")(x))
    outputs = keras.layers.Average(name="probabilities")(branch_outputs)
    return keras.Model(inputs, outputs, name="stack"), recipe


def weighted_layers(model) -> list:
    return [layer for layer in model.layers if layer.weights]


def is_batchnorm(layer) -> bool:
    import keras

    return isinstance(layer, keras.layers.BatchNormalization)


def tunable_layers(model) -> list:
    """Layers whose weights fine-tuning may change: everything weighted except BatchNormalization."""
    return [layer for layer in weighted_layers(model) if not is_batchnorm(layer)]


def unfreeze(backbone_model, top: int | None = None) -> list[str]:
    """Unfreeze the last ``top`` tunable layers (all of them when ``top`` is None); return their names.

    BatchNormalization layers stay frozen, which in Keras 3 is what keeps them in inference mode: a
    Functional model passes the outer ``training`` flag down to nested models, overriding the
    ``training=False`` recorded at the call (measured: an unfrozen backbone's BN switched to batch
    statistics and the train loss of a converged head jumped from 0.10 to 0.49).
    """
    backbone_model.trainable = True
    layers = tunable_layers(backbone_model)
    chosen = layers if top is None or top >= len(layers) else layers[-top:]
    chosen_ids = {id(layer) for layer in chosen}
    for layer in backbone_model.layers:
        layer.trainable = id(layer) in chosen_ids
    return [layer.name for layer in chosen]
