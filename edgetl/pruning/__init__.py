"""`edgetl prune`: magnitude (unstructured) or structured (channel) pruning plus recovery fine-tuning.

``prune(PruneConfig(...)) -> PruneResult``: loads a model directory written by finetune, prunes it,
fine-tunes it for a few epochs on the same train/val split it was trained with (recorded val_split and
seed) to recover accuracy, and writes a new model directory: ``model.keras`` (a plain Keras model, no
pruning wrappers), ``edgetl.json`` (the source metadata plus a ``pruning`` record) and
``training.png`` (the recovery curve). With ``sweep`` it prunes at several sparsities and writes one
accuracy/latency/size report instead (see ``edgetl.pruning.sweep``).
"""

from __future__ import annotations

import copy

import numpy as np
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError

METHODS = ("magnitude", "structured")


@dataclass
class PruneConfig:
    model_dir: Path
    out: Path
    method: str = "magnitude"
    sparsity: float = 0.5
    schedule: str = "polynomial"  # magnitude only: constant | polynomial
    importance: str = "l1"  # structured only: l1 | bn
    data: Path | None = None  # default: the data set the model was trained on
    epochs: int = 2  # recovery fine-tuning; 0 = prune only
    batch_size: int = 16
    lr: float = 1e-4
    reconstruct: bool = True  # structured: least-squares refit of the projections to the original outputs
    # structured: re-estimate BN statistics on the training images. Off by default: on small data sets it
    # trades ImageNet-wide statistics for a few hundred images (lite0 on 195 photos: 92% -> 57%).
    recalibrate_bn: bool = False
    min_params: int = 1000  # magnitude: kernels smaller than this stay dense
    prune_classifier: bool = False  # magnitude: the final Dense (logits) stays dense by default
    sweep: tuple[float, ...] = ()
    overwrite: bool = True
    verbose: bool = True

    def __post_init__(self):
        self.model_dir, self.out = Path(self.model_dir), Path(self.out)
        self.data = Path(self.data) if self.data else None
        self.sweep = tuple(float(v) for v in self.sweep)

    def validate(self) -> None:
        from .magnitude import SCHEDULES
        from .structured import IMPORTANCE

        if self.method not in METHODS:
            raise UsageError(f"unknown pruning method {self.method!r}; choose one of {', '.join(METHODS)}")
        for value in (self.sparsity, *self.sweep):
            if not 0.0 < value < 1.0:
                raise UsageError(f"sparsity must be strictly between 0 and 1, got {value}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.importance not in IMPORTANCE:
            raise UsageError(f"unknown importance {self.importance!r}; choose one of {', '.join(IMPORTANCE)}")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise UsageError("epochs must be >= 0, batch size >= 1 and the learning rate > 0")
        if not Path(self.model_dir).is_dir():
            raise UsageError(f"model directory {self.model_dir} does not exist")
        from ..metadata import MODEL_FILE, read_model_metadata

        read_model_metadata(self.model_dir)  # missing, not JSON, or lacking fields: one line, before TensorFlow
        if not (self.model_dir / MODEL_FILE).is_file():
            raise UsageError(f"{self.model_dir}: no {MODEL_FILE} to prune")
        from ..training import check_keras_file

        check_keras_file(self.model_dir / MODEL_FILE)
        from ..metadata import check_output_dir

        check_output_dir(self.out, self.inputs(), self.overwrite)

    def inputs(self) -> tuple[Path | None, ...]:
        """What --out may not be, hold or lie inside: the model and the recovery data."""
        from ..metadata import MODEL_METADATA, read_json

        data = self.data
        if data is None:
            try:
                data = (read_json(self.model_dir / MODEL_METADATA).get("dataset") or {}).get("root")
            except (OSError, ValueError, AttributeError):
                data = None
        return (self.model_dir, data)


@dataclass
class PruneResult:
    model_dir: Path
    record: dict[str, Any]
    model: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def val_accuracy(self) -> float | None:
        return self.record.get("accuracy", {}).get("after_recovery")


def prune(config: PruneConfig) -> PruneResult:
    """Prune, recover, write. With ``config.sweep`` runs the sweep and returns its summary."""
    config.validate()
    if config.sweep:
        from .sweep import run_sweep

        return run_sweep(config)
    return prune_model(config)


# -- one pruning run --------------------------------------------------------------------------------
def prune_model(config: PruneConfig) -> PruneResult:
    import keras

    from ..training import load_trained
    from ..metadata import read_model_metadata

    started = time.perf_counter()
    if config.method == "structured":
        _family(read_model_metadata(config.model_dir))  # unsupported topology: fail before any work
    model, metadata = load_trained(config.model_dir)
    _check_prunable(model, metadata, config)
    keras.utils.set_random_seed(metadata.get("dataset", {}).get("seed", 0))
    data = _Data.load(config, metadata)
    original = _evaluate(model, data.val_ds)
    params_before = int(model.count_params())
    _log(config, f"pruning {config.model_dir} ({metadata.get('backbone')}): {config.method} to "
                 f"{config.sparsity:.0%}; val accuracy before {original.get('val_accuracy')}")

    if config.method == "magnitude":
        model, details, before, history = _magnitude(model, metadata, config, data)
    else:
        model, details, before, history = _structured(model, metadata, config, data)
    after = _evaluate(model, data.val_ds)
    record = {
        "method": config.method,
        "target_sparsity": config.sparsity,
        **details,
        "params_before": params_before,
        "params_after": int(model.count_params()),
        "accuracy": {"original": original.get("val_accuracy"), "before_recovery": before.get("val_accuracy"),
                     "after_recovery": after.get("val_accuracy")},
        "val_loss": {"original": original.get("val_loss"), "before_recovery": before.get("val_loss"),
                     "after_recovery": after.get("val_loss")},
        "recovery": {"epochs": config.epochs, "lr": config.lr, "batch_size": config.batch_size,
                     "optimizer": "adam", "batchnorm": "inference mode (frozen statistics)",
                     "data": str(data.root), "val_split": data.val_split, "seed": data.seed,
                     "history": history},
        "source_model": {"path": str(Path(config.model_dir).resolve()),
                         "sha256": metadata.get("model_sha256")},
        "seconds": round(time.perf_counter() - started, 2),
    }
    new_metadata = _write(config, model, metadata, record, after, history)
    _log(config, f"wrote {config.out}: params {params_before} -> {record['params_after']}, val accuracy "
                 f"{record['accuracy']['before_recovery']} before / {record['accuracy']['after_recovery']} "
                 f"after recovery")
    return PruneResult(Path(config.out), record, model, new_metadata)


def _check_prunable(model, metadata, config: PruneConfig) -> None:
    from . import magnitude as mag
    from . import structured as st

    if config.method == "magnitude":
        skip = () if config.prune_classifier else _classifier_layers(model, metadata)
        if not mag.prunable_layers(model, config.min_params, skip):
            raise UsageError(f"{config.model_dir}: no prunable layers (conv/dense kernels with >= "
                             f"{config.min_params} weights, classifier excluded)")
    elif not st.family_groups(model, _family(metadata)):
        raise UsageError(f"{config.model_dir}: no prunable channel groups found in backbone "
                         f"{metadata.get('backbone')}")


def _magnitude(model, metadata, config: PruneConfig, data: "_Data"):
    from . import magnitude as mag

    skip = () if config.prune_classifier else _classifier_layers(model, metadata)
    layers = mag.prunable_layers(model, config.min_params, skip)
    state = mag.MaskState(layers)
    # Accuracy of the one-shot pruned model at the target, before any recovery.
    saved = [mag.kernel_of(layer).numpy() for layer in layers]
    state.update(config.sparsity)
    before = _evaluate(model, data.val_ds)
    if config.schedule == "polynomial":
        for layer, value in zip(layers, saved):
            mag.kernel_of(layer).assign(value)  # the schedule ramps from the dense weights
    total_steps = config.epochs * data.steps_per_epoch
    schedule = mag.Schedule.for_training(config.schedule, config.sparsity, total_steps)
    history = _recover(model, data, config, [mag.pruning_callback(state, schedule)])
    if not history:  # no recovery: keep the one-shot masks
        state.update(config.sparsity)
    per_layer = mag.sparsity_report(layers)
    zeros = sum(v["zeros"] for v in per_layer.values())
    params = sum(v["params"] for v in per_layer.values())
    all_layers = [l for l in mag.iter_layers(model) if type(l).__name__ in mag.PRUNABLE_TYPES]
    skipped = {l.name: ("classifier" if l.name in skip else f"< {config.min_params} weights")
               for l in all_layers if l not in layers}
    details = {
        "schedule": {"kind": schedule.kind, "begin_step": schedule.begin_step, "end_step": schedule.end_step,
                     "frequency": schedule.frequency, "power": schedule.power, "total_steps": total_steps},
        "sparsity": round(zeros / params, 6),  # over the pruned kernels
        "pruned_weights": zeros,
        "per_layer": per_layer,
        "skipped_layers": skipped,
        "nonzero_params_after": int(model.count_params()) - zeros,
    }
    return model, details, before, history


def _structured(model, metadata, config: PruneConfig, data: "_Data"):
    from . import structured as st

    family = _family(metadata)
    groups = st.family_groups(model, family)
    st.select_channels(model, groups, config.sparsity, config.importance)
    original = model
    model = st.rebuild(model, groups)
    before = _evaluate(model, data.val_ds)
    refitted, reconstructed = [], None
    if config.reconstruct:
        batches = [np.asarray(x) for x, _ in data.train_eval_ds]
        refitted = st.reconstruct_consumers(original, model, groups, batches)
        reconstructed = _evaluate(model, data.val_ds).get("val_accuracy")
    recalibrated = None
    if config.recalibrate_bn:
        recalibrate_batchnorm(model, data.train_eval_ds)
        recalibrated = _evaluate(model, data.val_ds).get("val_accuracy")
    history = _recover(model, data, config, [])
    removed = sum(len(g.removed) for g in groups)
    total = sum(g.channels for g in groups)
    details = {
        "importance": config.importance,
        "family": family,
        "channel_sparsity": round(removed / total, 6),
        "channels_removed": removed,
        "per_layer": st.structured_record(groups),
        "reconstructed_layers": refitted,
        "accuracy_after_reconstruction": reconstructed,
        "accuracy_after_bn_recalibration": recalibrated,
    }
    return model, details, before, history


def _family(metadata) -> str:
    from .. import zoo
    from .structured import FAMILIES

    names = metadata.get("backbones") or [metadata.get("backbone")]
    if len(names) != 1:
        raise UsageError(f"structured pruning does not support stacked models ({metadata.get('backbone')})")
    family = zoo.get(names[0]).family
    if family not in FAMILIES:
        raise UsageError(f"structured pruning does not support backbone {names[0]} (topology "
                         f"{family!r}); supported: efficientnet_lite*, mobilenet_v2, vgg19")
    return family


def _classifier_layers(model, metadata) -> tuple[str, ...]:
    """The final classifier: the recorded logits layer, or every Dense feeding the output (stacks)."""
    from .magnitude import iter_layers

    logits = (metadata.get("output") or {}).get("logits_layer")
    names = {logits} if logits else set()
    names |= {l.name for l in iter_layers(model) if type(l).__name__ == "Dense" and l.name.endswith("logits")}
    return tuple(sorted(names))


# -- recovery ---------------------------------------------------------------------------------------
@dataclass
class _Data:
    root: Path
    val_split: float
    seed: int
    train_ds: Any
    val_ds: Any
    train_eval_ds: Any  # training images without augmentation (BN recalibration)
    steps_per_epoch: int

    @classmethod
    def load(cls, config: PruneConfig, metadata) -> "_Data":
        from ..data import load_pixels, load_splits, make_dataset
        from ..preprocess import Preprocessing

        dataset = metadata.get("dataset") or {}
        if not config.data and not dataset.get("root"):
            raise UsageError(f"{config.model_dir}: its edgetl.json records no training data "
                             f"(dataset.root); pass --data")
        root = Path(config.data or dataset.get("root"))
        if not config.data and not root.is_dir():
            raise UsageError(f"{config.model_dir} was trained on {root}, which is gone; pass --data")
        val_split, seed = dataset.get("val_split", 0.2), dataset.get("seed", 0)
        train, val = load_splits(root, val_split, seed)
        labels = metadata.get("labels")
        if labels and train.classes != labels:
            raise UsageError(f"{root} has classes {train.classes}, the model was trained on {labels}")
        recipe = Preprocessing.from_dict(metadata["preprocessing"])
        train_ds = make_dataset(train, recipe, config.batch_size, True, seed,
                                pixels=load_pixels(train.paths, recipe, training=True))
        val_ds = make_dataset(val, recipe, config.batch_size, False) if len(val) else None
        train_eval_ds = make_dataset(train, recipe, config.batch_size, False)
        return cls(root, val_split, seed, train_ds, val_ds, train_eval_ds, -(-len(train) // config.batch_size))


def _compile(model, lr: float = 1e-4) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def _evaluate(model, val_ds) -> dict[str, float]:
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


def _recover(model, data: _Data, config: PruneConfig, callbacks: list) -> list[dict[str, float]]:
    """Fine-tune every weight at a low rate with BatchNormalization frozen in inference mode.

    BN layers are made non-trainable rather than relying on the ``training=False`` the classifier
    records for its backbone: Keras 3 functional models pass the outer ``training=True`` of ``fit`` on
    to nested calls, and a non-trainable BN always runs on its moving statistics.
    """
    from ..training import _fit, is_batchnorm

    if config.epochs == 0:
        return []
    layers = _all_layers(model)
    saved = [layer.trainable for layer in layers]
    model.trainable = True
    for layer in layers:
        if is_batchnorm(layer):
            layer.trainable = False
    history: list[dict[str, float]] = []
    _fit(model, data.train_ds, data.val_ds, config.epochs, config.lr, "prune-recovery", config.verbose,
         history, callbacks=tuple(callbacks))
    for layer, trainable in zip(layers, saved):  # containers come before their children
        layer.trainable = trainable
    return history


# -- output -----------------------------------------------------------------------------------------
def _write(config: PruneConfig, model, metadata, record, metrics, history) -> dict[str, Any]:
    from ..training import plot_history
    from ..metadata import MODEL_FILE, MODEL_METADATA, atomic_directory, sha256_file, write_json

    new = copy.deepcopy(metadata)
    new["pruning"] = record
    if metrics:
        new["metrics"] = metrics
    with atomic_directory(config.out, config.overwrite, inputs=config.inputs(), verb="prune") as tmp:
        model.save(tmp / MODEL_FILE)
        new["model_sha256"] = sha256_file(tmp / MODEL_FILE)
        write_json(tmp / MODEL_METADATA, new)
        if history:
            plot_history(history, tmp / "training.png",
                         title=f"{metadata.get('backbone')} {config.method} {config.sparsity:.0%} recovery")
    return new


def _log(config: PruneConfig, message: str) -> None:
    if config.verbose:
        from ..console import say

        say(message)


__all__ = ["PruneConfig", "PruneResult", "prune", "METHODS"]
