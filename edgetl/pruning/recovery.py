"""After pruning: the recovery data (the model's own train/val split), evaluation, BatchNormalization
recalibration, and the recovery fine-tune with BN frozen in inference mode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..metadata import ModelCard
from ..training import is_batchnorm, train_phase
from .config import PruneConfig


@dataclass
class RecoveryData:
    root: Path
    val_split: float
    seed: int
    train_ds: Any
    val_ds: Any
    train_eval_ds: Any  # training images without augmentation (BN recalibration)
    steps_per_epoch: int
    train_set: Any = None  # the ImageSets and recipe behind the datasets (distillation rebuilds them)
    val_set: Any = None
    recipe: Any = None
    train_pixels: Any = None

    @classmethod
    def load(cls, config: PruneConfig, card: ModelCard) -> "RecoveryData":
        from ..data import load_pixels, load_splits, make_dataset

        dataset = card.dataset or {}
        if not config.data and not dataset.get("root"):
            raise UsageError(f"{config.model_dir}: its edgetl.json records no training data "
                             f"(dataset.root); pass --data")
        root = Path(config.data or dataset.get("root"))
        if not config.data and not root.is_dir():
            raise UsageError(f"{config.model_dir} was trained on {root}, which is gone; pass --data")
        val_split, seed = dataset.get("val_split", 0.2), dataset.get("seed", 0)
        train, val = load_splits(root, val_split, seed)
        labels = card.labels
        if labels and train.classes != labels:
            raise UsageError(f"{root} has classes {train.classes}, the model was trained on {labels}")
        recipe = card.recipe
        pixels = load_pixels(train.paths, recipe, training=True)
        train_ds = make_dataset(train, recipe, config.batch_size, True, seed, pixels=pixels)
        val_ds = make_dataset(val, recipe, config.batch_size, False) if len(val) else None
        train_eval_ds = make_dataset(train, recipe, config.batch_size, False)
        return cls(root, val_split, seed, train_ds, val_ds, train_eval_ds, -(-len(train) // config.batch_size),
                   train, val, recipe, pixels)


def _compile(model, lr: float = 1e-4) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def evaluate(model, val_ds) -> dict[str, float]:
    if val_ds is None:
        return {}
    _compile(model)
    loss, accuracy = model.evaluate(val_ds, verbose=0)
    return {"val_loss": float(loss), "val_accuracy": float(accuracy)}


def _all_layers(model) -> list:
    out = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers") and layer.layers:
            out += _all_layers(layer)
    return out


def recalibrate_batchnorm(model, dataset) -> None:
    """Re-estimate every BN layer's moving statistics as the average over ``dataset``'s batches.

    Removing channels changes what the following BN layers see (a projection summed over fewer
    channels), so their stored statistics no longer fit; refreshing them is the cheap first half of
    recovery (EagleEye's adaptive BN). Momentum i/(i+1) on batch i makes the moving value the running
    mean of the per-batch statistics.
    """
    bns = [layer for layer in _all_layers(model) if type(layer).__name__ == "BatchNormalization"]
    saved = [(layer.trainable, layer.momentum) for layer in bns]
    for layer in bns:
        layer.trainable = True  # a non-trainable BN never updates its statistics
    for i, (images, _) in enumerate(dataset):
        for layer in bns:
            layer.momentum = i / (i + 1)
        model(images, training=True)  # the outer training=True reaches the nested backbone
    for layer, (trainable, momentum) in zip(bns, saved):
        layer.trainable, layer.momentum = trainable, momentum


def recover(model, data: RecoveryData, config: PruneConfig, callbacks: list,
            teacher=None) -> list[dict[str, float]]:
    """Fine-tune every weight at a low rate with BatchNormalization frozen in inference mode.

    BN layers are made non-trainable rather than relying on the ``training=False`` the classifier
    records for its backbone: Keras 3 functional models pass the outer ``training=True`` of ``fit`` on
    to nested calls, and a non-trainable BN always runs on its moving statistics.
    ``teacher``: the unpruned Keras model, for ``recovery_loss="features"``.
    """
    if config.epochs == 0:
        return []
    layers = _all_layers(model)
    saved = [layer.trainable for layer in layers]
    # Layer by layer: `model.trainable = True` leaves a frozen backbone's layers frozen (Keras 3.15), so
    # recovery used to train only the classifier of a `features` model.
    for layer in layers:  # containers come before their children
        layer.trainable = not is_batchnorm(layer)
    history: list[dict[str, float]] = []
    train_ds, val_ds, loss, metrics = data.train_ds, data.val_ds, "sparse_categorical_crossentropy", ("accuracy",)
    trained = model
    if config.recovery_loss == "distill":
        train_ds, val_ds, loss, metrics = _distillation(data, config)
    elif config.recovery_loss == "features":
        trained, loss, metrics = _feature_matching(model, teacher, config.distill_weight)
    if config.patience and val_ds is not None:
        import keras

        callbacks = [*callbacks, keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                                               restore_best_weights=True)]
    train_phase(trained, train_ds, val_ds, config.epochs, config.lr, "prune-recovery", config.verbose,
                history, callbacks=tuple(callbacks), loss=loss, metrics=metrics)
    for layer, trainable in zip(layers, saved):  # containers come before their children
        layer.trainable = trainable
    return history


def _distillation(data: RecoveryData, config: PruneConfig):
    """(train, val, loss, metrics) for recovery by distillation from the unpruned model (``model_dir``):
    finetune's ``distill`` strategy, its loss and teacher table, on the same split."""
    from ..data import make_dataset
    from ..training import distill_loss, teacher_rows

    table, rows_train, rows_val = teacher_rows(config.model_dir, data.train_set, data.val_set)
    train_ds = make_dataset(rows_train, data.recipe, config.batch_size, True, data.seed, pixels=data.train_pixels)
    val_ds = make_dataset(rows_val, data.recipe, config.batch_size, False) if len(rows_val) else None
    loss, accuracy = distill_loss(table, config.temperature, config.distill_weight)
    accuracy.__name__ = "accuracy"  # history keys as for the label loss
    return train_ds, val_ds, loss, (accuracy,)


FEATURES_LAYER = "pool"  # the classifier's pooled backbone features (training/builders.py)


def _feature_matching(model, teacher, weight: float):
    """(training model, loss, metrics) for recovery by matching the unpruned model's pooled features:
    the training model outputs the student's probabilities next to its feature gap to the frozen
    teacher, and the loss is ``(1 - weight) * CE(label) + weight * mean(gap^2)``. Every channel of the
    1280 features the head reads is a target, where the label and the teacher's probabilities are one
    number per image; the student's layers are shared, so training it trains ``model``."""
    import keras
    import tensorflow as tf

    if teacher is None:
        raise UsageError("recovery loss 'features' needs the unpruned model (structured pruning)")
    n_classes = int(model.output.shape[-1])
    teacher.trainable = False  # inference-mode BN, no updates
    student = keras.Model(model.inputs, [model.output, model.get_layer(FEATURES_LAYER).output], name="student")
    reference = keras.Model(teacher.inputs, teacher.get_layer(FEATURES_LAYER).output, name="teacher")
    image = keras.Input(model.inputs[0].shape[1:], name="image")
    probs, features = student(image)
    gap = keras.layers.Subtract(name="feature_gap")([features, reference(image)])
    trained = keras.Model(image, keras.layers.Concatenate(name="probs_and_gap")([probs, gap]))

    def loss(labels, out):
        hard = keras.losses.sparse_categorical_crossentropy(labels, out[:, :n_classes])
        return (1.0 - weight) * hard + weight * tf.reduce_mean(tf.square(out[:, n_classes:]), -1)

    def accuracy(labels, out):
        predicted = tf.argmax(out[:, :n_classes], -1)
        return tf.cast(tf.equal(tf.cast(tf.reshape(labels, [-1]), tf.int64), predicted), tf.float32)

    return trained, loss, (accuracy,)
