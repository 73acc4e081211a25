"""`edgetl finetune`: a backbone from the zoo plus a new head, trained on an image folder.

Strategies (TFLite Model Maker / Keras transfer-learning guide semantics):

* ``features``: frozen backbone, new head (global pooling, dropout, dense, softmax).
* ``freeze``: head first, then the top ``unfreeze_top`` weighted (non-BN) layers of the backbone at a lower rate.
* ``full``: head first, then the whole network at a low rate.
* ``stack``: frozen features of several backbones, each with its own small classifier, probabilities
  averaged; one Keras model taking raw 0..255 pixels (each branch normalises/resizes in-graph).
* ``distill``: ``features`` trained on the soft predictions of a teacher (``--teacher``: any edgetl
  model directory, a stack included) as well as on the labels (Hinton et al.'s loss, ``distill_loss``);
  the result is an ordinary one-backbone classifier, exported like any other.

BatchNormalization layers stay frozen and in inference mode in every phase (see ``unfreeze``), which is
what keeps fine-tuning on a small data set from wrecking the pretrained statistics.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import zoo
from ..data import ImageSet, load_pixels, load_splits, make_dataset
from ..errors import UsageError
from ..metadata import (MODEL_FILE, MODEL_METADATA, MODEL_SCHEMA, atomic_directory, check_output_dir,
                       sha256_file, software_versions, write_json)
from ..metrics import softmax
from ..preprocess import Preprocessing

log = logging.getLogger("edgetl")

STRATEGIES = ("features", "freeze", "full", "stack", "distill")
LOGITS_LAYER = "logits"
BACKBONE_LAYER = "backbone"


@dataclass
class FinetuneConfig:
    data: Path
    out: Path
    backbone: str = zoo.DEFAULT_BACKBONE
    backbones: tuple[str, ...] = ()  # for strategy="stack"
    weights: str = "imagenet"
    strategy: str = "features"
    unfreeze_top: int = 20
    epochs: int = 5
    fine_tune_epochs: int | None = None  # second phase of freeze/full; default: epochs
    batch_size: int = 16
    lr: float = 1e-3
    fine_tune_lr: float | None = None  # default: lr/10 (freeze), lr/100 (full)
    dropout: float = 0.2
    val_split: float = 0.2
    seed: int = 0
    input_size: int | None = None
    verbose: bool = True
    teacher: Path | None = None  # strategy distill: an edgetl model directory
    temperature: float = 2.0  # distill: softens teacher and student alike
    distill_weight: float = 0.5  # distill: share of the soft (teacher) term; the rest is the label loss

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UsageError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.strategy == "stack" and len(self.backbones) < 2:
            raise UsageError("strategy 'stack' needs --backbones with at least two names")
        for name in self.backbones or (self.backbone,):
            zoo.get(name)
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UsageError("epochs and batch size must be >= 1 and the learning rate > 0")
        if self.strategy == "freeze" and self.unfreeze_top < 1:
            raise UsageError("--unfreeze-top must be >= 1 for strategy 'freeze'")
        self._validate_numbers()
        if not Path(self.data).is_dir():
            raise UsageError(f"data folder {self.data} does not exist")
        pre_split = (Path(self.data) / "train").is_dir() and (Path(self.data) / "val").is_dir()
        if not pre_split and not 0.0 < self.val_split < 1.0:
            # No held-out images would mean no val accuracy (nan) and no parity set for export.
            raise UsageError(f"--val-split must be between 0 and 1 (exclusive), got {self.val_split}; "
                             f"to choose the validation images yourself, use DATA/train and DATA/val")
        check_output_dir(self.out, self.inputs())  # before training, not after it

    def inputs(self) -> tuple[Path | None, ...]:
        """What --out may not be, hold or lie inside: the data and a weights file."""
        weights = Path(self.weights) if self.weights not in (None, "imagenet", "none") else None
        return (Path(self.data), weights, Path(self.teacher) if self.teacher else None)

    def _validate_numbers(self) -> None:
        """Ranges Keras would otherwise reject with a traceback, or silently replace."""
        if self.fine_tune_epochs is not None and self.fine_tune_epochs < 1:
            raise UsageError(f"--fine-tune-epochs must be >= 1, got {self.fine_tune_epochs}")
        if self.fine_tune_lr is not None and self.fine_tune_lr <= 0:
            raise UsageError(f"--fine-tune-lr must be > 0, got {self.fine_tune_lr}")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.input_size is not None:
            if self.strategy == "stack":
                raise UsageError("--input-size does not apply to strategy 'stack' (each backbone keeps "
                                 "its own size)")
            spec = zoo.get(self.backbone)
            if self.input_size < spec.min_input_size:
                # 0 included: it used to fall back to the default size silently.
                raise UsageError(f"--input-size must be >= {spec.min_input_size} for {spec.name}, "
                                 f"got {self.input_size}")


@dataclass
class TrainedModel:
    model_dir: Path
    model: Any
    metadata: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def val_accuracy(self) -> float | None:
        return self.metadata.get("metrics", {}).get("val_accuracy")


# -- model assembly ---------------------------------------------------------------------------------
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


# -- training ---------------------------------------------------------------------------------------
class _EpochPrinter:
    """Keras callback printing one line per epoch to stderr (progress for long runs)."""

    def __new__(cls, phase: str, total: int, verbose: bool):
        import keras

        class Printer(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                from ..console import progress

                self._progress = progress(total, f"training ({phase})", enabled=verbose)
                self._bar = self._progress.__enter__()

            def on_train_end(self, logs=None):
                self._progress.__exit__(None, None, None)

            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                if not verbose:
                    return
                logs = logs or {}
                self._bar.advance()
                self._bar.print(f"[{phase}] epoch {epoch + 1}/{total}  loss {logs.get('loss', float('nan')):.4f}  "
                      f"acc {logs.get('accuracy', float('nan')):.3f}  "
                      f"val_loss {logs.get('val_loss', float('nan')):.4f}  "
                      f"val_acc {logs.get('val_accuracy', float('nan')):.3f}  "
                      f"({time.perf_counter() - self.start:.1f}s)")

        return Printer()


def _fit(model, train_ds, val_ds, epochs: int, lr: float, phase: str, verbose: bool, history: list,
         callbacks: tuple = (), loss: Any = "sparse_categorical_crossentropy", metrics: tuple = ("accuracy",)):
    """Compile, train and append one history row per epoch (shared with prune's recovery)."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=list(metrics))
    # shuffle=False: the tf.data pipeline shuffles itself (Keras warns otherwise).
    result = model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0, shuffle=False,
                       callbacks=[*callbacks, _EpochPrinter(phase, epochs, verbose)])
    keys = list(result.history)
    for epoch in range(epochs):
        history.append({"phase": phase, "epoch": len(history) + 1,
                        **{k: float(result.history[k][epoch]) for k in keys}})


def finetune(config: FinetuneConfig) -> TrainedModel:
    """Train, evaluate and write ``model.keras`` + ``edgetl.json`` + ``training.png`` atomically."""
    import keras

    config.validate()
    keras.utils.set_random_seed(config.seed)
    started = time.perf_counter()
    train_set, val_set = load_splits(config.data, config.val_split, config.seed)
    n_classes = len(train_set.classes)
    if not len(val_set):
        raise UsageError(f"{config.data}: no validation images (--val-split {config.val_split} of "
                         f"{len(train_set)} images, or an empty val folder); raise --val-split or add images")

    if config.strategy == "stack":
        model, recipe = build_stack(list(config.backbones), config.weights, n_classes, config.dropout,
                                    config.seed)
        base = None
    else:
        spec = zoo.get(config.backbone)
        recipe = spec.recipe(config.input_size)
        base = spec.build(config.weights, recipe.input_size[0])
        base.name = BACKBONE_LAYER
        base.trainable = False
        model = build_classifier(base, recipe, n_classes, config.dropout, config.seed)

    _log(config, f"{len(train_set)} training / {len(val_set)} validation images, classes "
                 f"{train_set.classes}; strategy {config.strategy}")
    train_ds = make_dataset(train_set, recipe, config.batch_size, True, config.seed,
                            pixels=load_pixels(train_set.paths, recipe, training=True))
    val_ds = make_dataset(val_set, recipe, config.batch_size, False) if len(val_set) else None

    history: list[dict[str, float]] = []
    teacher_info = None
    if config.strategy == "distill":
        teacher_info = _distill(config, model, train_set, val_set, recipe, history)
    else:
        _fit(model, train_ds, val_ds, config.epochs, config.lr, "head", config.verbose, history)
    unfrozen: list[str] = []
    if config.strategy in ("freeze", "full"):
        if config.strategy == "freeze":
            unfrozen = unfreeze(base, config.unfreeze_top)
            default_lr = config.lr / 10
        else:
            unfrozen = unfreeze(base)
            default_lr = config.lr / 100
        _fit(model, train_ds, val_ds, config.fine_tune_epochs or config.epochs,
             config.fine_tune_lr or default_lr, config.strategy, config.verbose, history)

    metrics = _evaluate(model, val_ds) if val_ds is not None else {}
    metadata = _metadata(config, train_set, val_set, recipe, history, metrics, unfrozen,
                         time.perf_counter() - started)
    if teacher_info:
        metadata["teacher"] = teacher_info
    with atomic_directory(config.out, inputs=config.inputs(), verb="finetune") as tmp:
        model.save(tmp / MODEL_FILE)
        metadata["model_sha256"] = sha256_file(tmp / MODEL_FILE)
        write_json(tmp / MODEL_METADATA, metadata)
        plot_history(history, tmp / "training.png", title=f"{metadata['backbone']} ({config.strategy})")
    _log(config, f"wrote {config.out} (val accuracy {metrics.get('val_accuracy', float('nan')):.3f})")
    return TrainedModel(Path(config.out), model, metadata, history)


# -- distillation -----------------------------------------------------------------------------------
# A plain KD loss rather than keras.distillation.Distiller (Keras 3.15 has it): the Distiller runs the
# teacher on the student's input batch, but an edgetl teacher has its own input size and normalisation
# (a stack takes raw pixels at its largest backbone's size). So the teacher runs once, on its own
# preprocessing of every image, and the dataset's label becomes the image's row in a table of
# (label, teacher probabilities); the model stays the plain classifier with its ``logits`` layer.
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


def _distill(config: FinetuneConfig, model, train_set: ImageSet, val_set: ImageSet, recipe: Preprocessing,
             history: list) -> dict[str, Any]:
    import numpy as np

    from ..metadata import read_model_metadata

    if config.teacher is None or not Path(config.teacher).is_dir():
        raise UsageError(f"strategy 'distill' needs --teacher MODEL_DIR (an edgetl model directory); "
                         f"got {config.teacher}")
    teacher_meta = read_model_metadata(config.teacher)
    if teacher_meta.get("labels") != train_set.classes:
        raise UsageError(f"teacher {config.teacher} has classes {teacher_meta.get('labels')}, "
                         f"the data {train_set.classes}")
    if not 0.0 <= config.distill_weight <= 1.0 or config.temperature <= 0:
        raise UsageError("--distill-weight must be in [0, 1] and --temperature > 0")
    paths = list(train_set.paths) + list(val_set.paths)
    probs, _ = teacher_probabilities(Path(config.teacher), paths)
    labels = np.asarray(list(train_set.labels) + list(val_set.labels), np.float64)
    table = np.concatenate([labels[:, None], probs], axis=1)
    _log(config, f"teacher {config.teacher} ({teacher_meta.get('backbone')}): accuracy "
                 f"{float((probs.argmax(-1) == labels).mean()):.3f} on train+val")
    # Labels replaced by row numbers (train first, then val) so that shuffling keeps each image with its row.
    rows_train = dataclasses.replace(train_set, labels=list(range(len(train_set))))
    rows_val = dataclasses.replace(val_set, labels=list(range(len(train_set), len(paths))))
    train_ds = make_dataset(rows_train, recipe, config.batch_size, True, config.seed,
                            pixels=load_pixels(train_set.paths, recipe, training=True))
    val_ds = make_dataset(rows_val, recipe, config.batch_size, False) if len(val_set) else None
    loss, accuracy = distill_loss(table, config.temperature, config.distill_weight)
    accuracy.__name__ = "accuracy"  # history keys as for the other strategies
    _fit(model, train_ds, val_ds, config.epochs, config.lr, "distill", config.verbose, history,
         loss=loss, metrics=(accuracy,))
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])  # plain labels again
    teacher_val = float((probs[len(train_set):].argmax(-1) == labels[len(train_set):]).mean()) if len(val_set) else None
    return {"path": str(Path(config.teacher).resolve()), "backbone": teacher_meta.get("backbone"),
            "model_sha256": teacher_meta.get("model_sha256"), "val_accuracy": teacher_val,
            "temperature": config.temperature, "distill_weight": config.distill_weight}


def _evaluate(model, val_ds) -> dict[str, float]:
    loss, accuracy = model.evaluate(val_ds, verbose=0)
    return {"val_loss": float(loss), "val_accuracy": float(accuracy)}


def weights_source(weights: str, names: list[str]) -> dict[str, Any]:
    if weights == "imagenet":
        return {"kind": "imagenet", "source": sorted({zoo.get(n).imagenet_source for n in names})}
    if weights in (None, "none"):
        return {"kind": "none"}
    return {"kind": "file", "path": str(Path(weights).resolve()), "sha256": sha256_file(weights)}


def _metadata(config: FinetuneConfig, train_set: ImageSet, val_set: ImageSet, recipe: Preprocessing,
              history, metrics, unfrozen, seconds: float) -> dict[str, Any]:
    names = list(config.backbones) if config.strategy == "stack" else [config.backbone]
    return {
        "schema": MODEL_SCHEMA,
        "labels": train_set.classes,
        "input": {"name": "image", "shape": [None, *recipe.input_size, 3], "layout": "NHWC",
                  "dtype": "float32"},
        "output": {"kind": "probabilities", "logits_layer": None if config.strategy == "stack" else LOGITS_LAYER},
        "preprocessing": recipe.to_dict(),
        "backbone": "+".join(names),
        "backbones": names,
        "weights": weights_source(config.weights, names),
        "strategy": config.strategy,
        "unfrozen_layers": unfrozen,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()},
        "dataset": {
            "root": str(Path(config.data).resolve()),
            "val_split": config.val_split,
            "seed": config.seed,
            "train": {"count": len(train_set), "per_class": train_set.counts(),
                      "fingerprint": train_set.fingerprint()["fingerprint"]},
            "val": {"count": len(val_set), "per_class": val_set.counts(),
                    "fingerprint": val_set.fingerprint()["fingerprint"] if len(val_set) else None,
                    # Relative to dataset.root (also for DATA/{train,val} layouts) so export can find them.
                    "files": [str(p.relative_to(Path(config.data))) for p in val_set.paths]},
            "skipped": [str(p) for p, _ in train_set.skipped],
        },
        "history": history,
        "metrics": metrics,
        "train_seconds": round(seconds, 2),
        "versions": software_versions(["tensorflow", "keras"]),
    }


def plot_history(history: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, ax in (("loss", ax_loss), ("accuracy", ax_acc)):
        ax.plot(epochs, [h.get(key) for h in history], "o-", label=f"train {key}")
        if any("val_" + key in h for h in history):
            ax.plot(epochs, [h.get("val_" + key) for h in history], "s-", label=f"val {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _log(config: FinetuneConfig, message: str) -> None:
    if config.verbose:
        from ..console import say

        say(message)


def load_trained(model_dir: str | Path):
    """(keras model, metadata) from a model directory."""
    from ..metadata import read_model_metadata

    model_dir = Path(model_dir)
    metadata = read_model_metadata(model_dir)
    path = model_dir / MODEL_FILE
    if not path.exists():
        raise UsageError(f"{model_dir}: no {MODEL_FILE}")
    return load_keras_model(path), metadata


def check_keras_file(path: str | Path) -> None:
    """Without TensorFlow: the file exists and is a complete zip archive (a .keras file is one)."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise UsageError(f"{path}: not a valid Keras file (truncated, or not a .keras zip archive)")


def load_keras_model(path: str | Path):
    """``keras.models.load_model`` with one-line errors: Keras reports a truncated file as "File not
    found", so the zip container is checked first."""
    import keras

    path = Path(path)
    check_keras_file(path)
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # corrupt members, foreign layers: one line, not a traceback
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise UsageError(f"{path}: not a valid Keras file, Keras cannot load it ({first})") from None
