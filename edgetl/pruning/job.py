"""`edgetl prune`: magnitude (unstructured) or structured (channel) pruning plus recovery fine-tuning.

``prune(PruneConfig(...)) -> PruneResult``: loads a model directory written by finetune, prunes it,
fine-tunes it for a few epochs on the same train/val split it was trained with (recorded val_split and
seed) to recover accuracy, and writes a new model directory: ``model.keras`` (a plain Keras model, no
pruning wrappers), ``edgetl.json`` (the source metadata plus a ``pruning`` record) and
``training.png`` (the recovery curve). With ``sweep`` it prunes at several sparsities and writes one
accuracy/latency/size report instead (see ``edgetl.pruning.sweep``).

The package: ``config.py`` (PruneConfig, PruneResult), ``magnitude.py`` and ``structured.py`` (the two
methods), ``recovery.py`` (recovery data, fine-tune, BN recalibration), ``sweep.py``, ``artifacts.py``
and this orchestration.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from ..choices import PruneMethod
from ..console import say
from ..errors import UsageError
from ..metadata import MODEL_FILE, ModelCard, atomic_directory, read_model_card
from .config import PruneConfig, PruneResult
from .recovery import RecoveryData, evaluate, recalibrate_batchnorm, recover


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

    from ..training import load_keras_model

    started = time.perf_counter()
    card = read_model_card(config.model_dir)
    if config.method == PruneMethod.STRUCTURED:
        _family(card)  # unsupported topology: fail before any work
    model = load_keras_model(config.model_dir / MODEL_FILE)
    _check_prunable(model, card, config)
    keras.utils.set_random_seed((card.dataset or {}).get("seed", 0))
    data = RecoveryData.load(config, card)
    original = evaluate(model, data.val_ds)
    params_before = int(model.count_params())
    say(f"pruning {config.model_dir} ({card.backbone}): {config.method} to "
        f"{config.sparsity:.0%}; val accuracy before {original.get('val_accuracy')}", config.verbose)

    if config.method == PruneMethod.MAGNITUDE:
        model, details, before, history = _magnitude(model, card, config, data)
    else:
        model, details, before, history = _structured(model, card, config, data)
    after = evaluate(model, data.val_ds)
    record = {
        "method": str(config.method),
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
                     "history": history, **_loss_record(config)},
        "source_model": {"path": str(Path(config.model_dir).resolve()),
                         "sha256": card.model_sha256},
        "seconds": round(time.perf_counter() - started, 2),
    }
    new_card = _write(config, model, card, record, after, history)
    say(f"wrote {config.out}: params {params_before} -> {record['params_after']}, val accuracy "
        f"{record['accuracy']['before_recovery']} before / {record['accuracy']['after_recovery']} "
        f"after recovery", config.verbose)
    return PruneResult(Path(config.out), record, model, new_card.to_dict())


def _loss_record(config: PruneConfig) -> dict:
    """The recovery loss, early stopping, and for the teacher-based losses their settings."""
    record = {"loss": config.recovery_loss, "patience": config.patience}
    if config.recovery_loss != "labels":
        record.update(teacher="the unpruned model", distill_weight=config.distill_weight)
    if config.recovery_loss == "distill":
        record["temperature"] = config.temperature
    return record


def _check_prunable(model, card: ModelCard, config: PruneConfig) -> None:
    from . import magnitude as mag
    from . import structured as st

    if config.method == PruneMethod.MAGNITUDE:
        skip = () if config.prune_classifier else _classifier_layers(model, card)
        if not mag.prunable_layers(model, config.min_params, skip):
            raise UsageError(f"{config.model_dir}: no prunable layers (conv/dense kernels with >= "
                             f"{config.min_params} weights, classifier excluded)")
    elif not st.family_groups(model, _family(card)):
        raise UsageError(f"{config.model_dir}: no prunable channel groups found in backbone "
                         f"{card.backbone}")


def _magnitude(model, card: ModelCard, config: PruneConfig, data: RecoveryData):
    from . import magnitude as mag

    skip = () if config.prune_classifier else _classifier_layers(model, card)
    layers = mag.prunable_layers(model, config.min_params, skip)
    state = mag.MaskState(layers)
    # Accuracy of the one-shot pruned model at the target, before any recovery.
    saved = [mag.kernel_of(layer).numpy() for layer in layers]
    state.update(config.sparsity)
    before = evaluate(model, data.val_ds)
    if config.schedule == "polynomial":
        for layer, value in zip(layers, saved):
            mag.kernel_of(layer).assign(value)  # the schedule ramps from the dense weights
    total_steps = config.epochs * data.steps_per_epoch
    schedule = mag.Schedule.for_training(config.schedule, config.sparsity, total_steps)
    history = recover(model, data, config, [mag.pruning_callback(state, schedule)])
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


def _structured(model, card: ModelCard, config: PruneConfig, data: RecoveryData):
    from . import structured as st

    family = _family(card)
    groups = st.family_groups(model, family)
    st.select_channels(model, groups, config.sparsity, config.importance, config.channel_multiple)
    original = model
    model = st.rebuild(model, groups)
    before = evaluate(model, data.val_ds)
    refitted, reconstructed = [], None
    if config.reconstruct:
        batches = [np.asarray(x) for x, _ in data.train_eval_ds]
        refitted = st.reconstruct_consumers(original, model, groups, batches)
        reconstructed = evaluate(model, data.val_ds).get("val_accuracy")
    recalibrated = None
    if config.recalibrate_bn:
        recalibrate_batchnorm(model, data.train_eval_ds)
        recalibrated = evaluate(model, data.val_ds).get("val_accuracy")
    history = recover(model, data, config, [], teacher=original)
    removed = sum(len(g.removed) for g in groups)
    total = sum(g.channels for g in groups)
    details = {
        "importance": config.importance,
        "channel_multiple": config.channel_multiple,
        "family": family,
        "channel_sparsity": round(removed / total, 6),
        "channels_removed": removed,
        "per_layer": st.structured_record(groups),
        "reconstructed_layers": refitted,
        "accuracy_after_reconstruction": reconstructed,
        "accuracy_after_bn_recalibration": recalibrated,
    }
    return model, details, before, history


def _family(card: ModelCard) -> str:
    from .. import zoo
    from .structured import FAMILIES

    names = card.backbone_names
    if len(names) != 1:
        raise UsageError(f"structured pruning does not support stacked models ({card.backbone})")
    family = zoo.get(names[0]).family
    if family not in FAMILIES:
        raise UsageError(f"structured pruning does not support backbone {names[0]} (topology "
                         f"{family!r}); supported: efficientnet_lite*, mobilenet_v2, vgg19")
    return family


def _classifier_layers(model, card: ModelCard) -> tuple[str, ...]:
    """The final classifier: the recorded logits layer, or every Dense feeding the output (stacks)."""
    from .magnitude import iter_layers

    logits = card.logits_layer
    names = {logits} if logits else set()
    names |= {l.name for l in iter_layers(model) if type(l).__name__ == "Dense" and l.name.endswith("logits")}
    return tuple(sorted(names))


def _write(config: PruneConfig, model, card: ModelCard, record, metrics, history) -> ModelCard:
    """The source card plus the ``pruning`` record (and the recovered metrics), with the model."""
    from ..training import save_model_dir

    new = dataclasses.replace(card, pruning=record, metrics=metrics or card.metrics)
    with atomic_directory(config.out, config.overwrite, inputs=config.inputs(), verb="prune") as tmp:
        return save_model_dir(tmp, model, new, history,
                              title=f"{card.backbone} {config.method} {config.sparsity:.0%} recovery")
