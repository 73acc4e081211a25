"""Strategy ``distill``: one backbone trained to follow a teacher (any edgetl model directory, a stack
included). Two ways to show it the teacher (``--teacher-view``), each with a features head or, with
``--student freeze``, strategy freeze's second phase after it:

* ``same`` (the default; ``matching.py``): function matching, the teacher runs in every training step on
  the student's own augmented view, pure KL (Beyer et al. 2022).
* ``fixed``: the teacher runs once, on its own preprocessing of every image, and the dataset's label
  becomes the image's row in a table of (label, teacher probabilities), trained with Hinton et al.'s
  loss (``distill_loss``, also prune's recovery loss). A plain KD loss rather than
  keras.distillation.Distiller (Keras 3.15 has it): the Distiller runs the teacher on the student's input
  batch, but an edgetl teacher has its own input size and normalisation (a stack takes raw pixels at
  its largest backbone's size).

Either way the model stays the plain classifier with its ``logits`` layer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..choices import Strategy
from ..console import say
from ..data import ImageSet, load_pixels, make_dataset
from ..errors import UsageError
from ..metadata import read_model_card
from ..metrics import softmax
from ..preprocess import Preprocessing
from .builders import unfreeze
from .config import BACKBONE_LAYER, FinetuneConfig
from .fit import train_phase
from .io import load_trained


def teacher_probabilities(teacher_dir: Path, paths: list[Path], batch_size: int = 16):
    """(N x classes teacher probabilities, teacher metadata) on the teacher's own preprocessing."""
    import numpy as np

    teacher, metadata = load_trained(teacher_dir)
    recipe = Preprocessing.from_dict(metadata["preprocessing"])
    out = []
    for i in range(0, len(paths), batch_size):
        x = recipe.normalize(load_pixels(paths[i:i + batch_size], recipe))
        out.append(np.asarray(teacher.predict(x, verbose=0), np.float64))
    probs = np.concatenate(out)
    if (metadata.get("output") or {}).get("kind") == "logits":
        probs = softmax(probs).astype(np.float64)
    return probs, metadata


def distill_loss(table, temperature: float, weight: float):
    """Loss on (row index, student probabilities): ``(1 - weight) * CE(label) + weight * T^2 *
    KL(teacher_T || student_T)``, softened through log-probabilities (log-softmax of logits / T equals
    log-softmax of log(probs) / T). ``table``: rows of [label, teacher probabilities...]."""
    import tensorflow as tf

    table = tf.constant(table, tf.float32)

    def loss(rows, probs):
        row = tf.gather(table, tf.cast(tf.reshape(rows, [-1]), tf.int32))
        labels, teacher = tf.cast(row[:, 0], tf.int32), row[:, 1:]
        hard = tf.keras.losses.sparse_categorical_crossentropy(labels, probs)
        student_t = tf.nn.log_softmax(tf.math.log(tf.clip_by_value(probs, 1e-7, 1.0)) / temperature)
        teacher_t = tf.nn.softmax(tf.math.log(tf.clip_by_value(teacher, 1e-7, 1.0)) / temperature)
        soft = tf.reduce_sum(teacher_t * (tf.math.log(tf.clip_by_value(teacher_t, 1e-12, 1.0)) - student_t), -1)
        return (1.0 - weight) * hard + weight * temperature ** 2 * soft

    def accuracy(rows, probs):
        labels = tf.gather(table[:, 0], tf.cast(tf.reshape(rows, [-1]), tf.int32))
        return tf.cast(tf.equal(tf.cast(labels, tf.int64), tf.argmax(probs, -1)), tf.float32)

    return loss, accuracy


def teacher_rows(teacher_dir: Path, train_set: ImageSet, val_set: ImageSet):
    """(table for ``distill_loss``, train set, val set) with each label replaced by the image's row
    number (train first, then val), so that shuffling keeps each image with its teacher row."""
    import numpy as np

    paths = list(train_set.paths) + list(val_set.paths)
    probs, _ = teacher_probabilities(Path(teacher_dir), paths)
    labels = np.asarray(list(train_set.labels) + list(val_set.labels), np.float64)
    table = np.concatenate([labels[:, None], probs], axis=1)
    rows_train = dataclasses.replace(train_set, labels=list(range(len(train_set))))
    rows_val = dataclasses.replace(val_set, labels=list(range(len(train_set), len(paths))))
    return table, rows_train, rows_val


def train_distilled(config: FinetuneConfig, model, train_set: ImageSet, val_set: ImageSet,
                    recipe: Preprocessing, history: list) -> tuple[dict[str, Any], list[str]]:
    """The distill phases on ``model`` (appended to ``history``): the head, then with ``student``
    freeze the top layers as strategy freeze does; returns (the card's ``teacher`` record, the
    unfrozen layer names)."""
    if config.teacher is None or not Path(config.teacher).is_dir():
        raise UsageError(f"strategy 'distill' needs --teacher MODEL_DIR (an edgetl model directory); "
                         f"got {config.teacher}")
    teacher = read_model_card(config.teacher)
    if teacher.labels != train_set.classes:
        raise UsageError(f"teacher {config.teacher} has classes {teacher.labels}, "
                         f"the data {train_set.classes}")
    if not 0.0 <= config.distill_weight <= 1.0 or config.temperature <= 0:
        raise UsageError("--distill-weight must be in [0, 1] and --temperature > 0")
    if config.teacher_view == "same":
        from .matching import consistent_phases

        phase, teacher_val = consistent_phases(config, model, train_set, val_set, recipe, history)
    else:
        phase, teacher_val = _fixed_view_phases(config, model, train_set, val_set, recipe, history)
    phase(config.epochs, config.lr, "distill")
    unfrozen: list[str] = []
    if config.student == Strategy.FREEZE:
        top, epochs, rate = config.second_phase(Strategy.FREEZE)
        unfrozen = unfreeze(model.get_layer(BACKBONE_LAYER), top)
        phase(epochs, rate, "freeze")
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])  # plain labels again
    record = {"path": str(Path(config.teacher).resolve()), "backbone": teacher.backbone,
              "model_sha256": teacher.model_sha256, "val_accuracy": teacher_val,
              "temperature": config.temperature, "distill_weight": config.distill_weight,
              "student": str(config.student), "teacher_view": config.teacher_view}
    if config.teacher_view == "same":
        record.update(loss="kl", distill_weight=1.0, mixup=config.mixup)
    return record, unfrozen


def _fixed_view_phases(config: FinetuneConfig, model, train_set: ImageSet, val_set: ImageSet,
                       recipe: Preprocessing, history: list):
    """(phase(epochs, lr, name), teacher val accuracy) for targets computed once per photo: the
    teacher's probabilities on its own eval crop, whatever augmented view the student gets."""
    table, rows_train, rows_val = teacher_rows(Path(config.teacher), train_set, val_set)
    probs, labels = table[:, 1:], table[:, 0]
    say(f"teacher {config.teacher}: accuracy {float((probs.argmax(-1) == labels).mean()):.3f} on train+val",
        config.verbose)
    train_ds = make_dataset(rows_train, recipe, config.batch_size, True, config.seed,
                            pixels=load_pixels(train_set.paths, recipe, training=True))
    val_ds = make_dataset(rows_val, recipe, config.batch_size, False) if len(val_set) else None
    loss, accuracy = distill_loss(table, config.temperature, config.distill_weight)
    accuracy.__name__ = "accuracy"  # history keys as for the other strategies

    def phase(epochs: int, lr: float, name: str) -> None:
        train_phase(model, train_ds, val_ds, epochs, lr, name, config.verbose, history, loss=loss,
                    metrics=(accuracy,))

    teacher_val = float((probs[len(train_set):].argmax(-1) == labels[len(train_set):]).mean()) if len(val_set) else None
    return phase, teacher_val
