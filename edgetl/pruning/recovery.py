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
        train_ds = make_dataset(train, recipe, config.batch_size, True, seed,
                                pixels=load_pixels(train.paths, recipe, training=True))
        val_ds = make_dataset(val, recipe, config.batch_size, False) if len(val) else None
        train_eval_ds = make_dataset(train, recipe, config.batch_size, False)
        return cls(root, val_split, seed, train_ds, val_ds, train_eval_ds, -(-len(train) // config.batch_size))


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


def recover(model, data: RecoveryData, config: PruneConfig, callbacks: list) -> list[dict[str, float]]:
    """Fine-tune every weight at a low rate with BatchNormalization frozen in inference mode.

    BN layers are made non-trainable rather than relying on the ``training=False`` the classifier
    records for its backbone: Keras 3 functional models pass the outer ``training=True`` of ``fit`` on
    to nested calls, and a non-trainable BN always runs on its moving statistics.
    """
    if config.epochs == 0:
        return []
    layers = _all_layers(model)
    saved = [layer.trainable for layer in layers]
    model.trainable = True
    for layer in layers:
        if is_batchnorm(layer):
            layer.trainable = False
    history: list[dict[str, float]] = []
    train_phase(model, data.train_ds, data.val_ds, config.epochs, config.lr, "prune-recovery", config.verbose,
                history, callbacks=tuple(callbacks))
    for layer, trainable in zip(layers, saved):  # containers come before their children
        layer.trainable = trainable
    return history
