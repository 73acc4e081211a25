"""`edgetl finetune`: a backbone from the zoo plus a new head, trained on an image folder.

Strategies (TFLite Model Maker / Keras transfer-learning guide semantics):

* ``features``: frozen backbone, new head (global pooling, dropout, dense, softmax).
* ``freeze``: head first, then the top ``unfreeze_top`` weighted (non-BN) layers of the backbone at a lower rate.
* ``full``: head first, then the whole network at a low rate.
* ``stack``: frozen features of several backbones, each with its own small classifier, probabilities
  averaged; one Keras model taking raw 0..255 pixels (each branch normalises/resizes in-graph).
* ``distill``: one backbone taught by a teacher (``--teacher``: any edgetl model directory, a stack
  included): by default the teacher sees each of the student's augmented views (function matching)
  and the student trains its head, then its top layers as ``freeze`` does (``distill.py``); the result
  is an ordinary one-backbone classifier, exported like any other.

The package: ``config.py`` (FinetuneConfig, TrainedModel), ``builders.py`` (the Keras models and which
layers train), ``fit.py`` (one training phase), ``distill.py``, ``io.py`` (model directories on disk)
and this orchestration.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

from .. import zoo
from ..choices import Strategy
from ..console import say
from ..data import ImageSet, load_splits, make_dataset
from ..errors import UsageError
from ..metadata import ModelCard, atomic_directory, sha256_file, software_versions
from ..preprocess import Preprocessing
from .builders import build_classifier, build_stack, unfreeze
from .cache import build_cache, cached_dataset, cut_layer, head_trainer, top_trainer
from .config import BACKBONE_LAYER, LOGITS_LAYER, FinetuneConfig, TrainedModel
from .distill import train_distilled
from .fit import evaluate, train_phase
from .io import save_model_dir


def finetune(config: FinetuneConfig) -> TrainedModel:
    """Train, evaluate and write ``model.keras`` + ``edgetl.json`` + ``training.png`` atomically.

    Training runs inside the output's staging folder, so the frozen-feature cache (``cache.py``) lives
    on disk there and vanishes with it, whatever happens."""
    import keras

    config.validate()
    keras.utils.set_random_seed(config.seed)
    started = time.perf_counter()
    train_set, val_set = load_splits(config.data, config.val_split, config.seed)
    n_classes = len(train_set.classes)
    if not len(val_set):
        raise UsageError(f"{config.data}: no validation images (--val-split {config.val_split} of "
                         f"{len(train_set)} images, or an empty val folder); raise --val-split or add images")

    if config.strategy == Strategy.STACK:
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

    say(f"{len(train_set)} training / {len(val_set)} validation images, classes "
        f"{train_set.classes}; strategy {config.strategy}", config.verbose)
    val_ds = make_dataset(val_set, recipe, config.batch_size, False)
    with atomic_directory(config.out, inputs=config.inputs(), verb="finetune") as tmp:
        history: list[dict[str, float]] = []
        teacher_info, unfrozen = _train(config, model, base, train_set, val_set, recipe, val_ds, tmp, history)
        # Plain cross-entropy whatever the training loss (label smoothing), for comparable val losses.
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        metrics = evaluate(model, val_ds)
        card = model_card(config, train_set, val_set, recipe, history, metrics, unfrozen,
                          time.perf_counter() - started, teacher=teacher_info or None)
        card = save_model_dir(tmp, model, card, history, title=f"{card.backbone} ({config.strategy})")
    say(f"wrote {config.out} (val accuracy {metrics.get('val_accuracy', float('nan')):.3f})", config.verbose)
    return TrainedModel(Path(config.out), model, card.to_dict(), history)


def _train(config: FinetuneConfig, model, base, train_set: ImageSet, val_set: ImageSet, recipe: Preprocessing,
           val_ds, staging: Path, history: list) -> tuple[dict | None, list[str]]:
    """The phases of ``config.strategy``; head-only phases (and freeze's second one) train from the
    frozen-feature cache unless ``frozen_views`` is 0. Returns (teacher info, unfrozen layer names)."""
    if config.strategy == Strategy.DISTILL:
        return train_distilled(config, model, train_set, val_set, recipe, history)
    streamed = None  # built only for phases that need photos

    def photos():
        nonlocal streamed
        streamed = streamed or make_dataset(train_set, recipe, config.batch_size, True, config.seed)
        return streamed

    if config.strategy == Strategy.STACK or not config.frozen_views:
        train_phase(model, photos(), val_ds, config.epochs, config.lr, "head", config.verbose, history,
                    images=len(train_set), **config.fit_options())
        if config.strategy == Strategy.STACK:
            return None, []
        top, epochs, rate = config.second_phase(config.strategy)
        if config.strategy == Strategy.FEATURES:
            return None, []
        unfrozen = unfreeze(base, top)
        train_phase(model, photos(), val_ds, epochs, rate, str(config.strategy), config.verbose, history,
                    images=len(train_set), **config.fit_options())
        return None, unfrozen

    top, epochs, rate = config.second_phase(config.strategy)
    unfrozen, cut = [], None
    if config.strategy == Strategy.FREEZE:
        # Which layers will train decides where the cache cuts; they stay frozen for the head phase.
        unfrozen = unfreeze(base, top)
        cut = cut_layer(base, unfrozen[0]) if unfrozen else None
        base.trainable = False
    directory = staging / ".frozen-cache"
    try:
        cache = build_cache(base, cut, train_set, val_set, recipe, config.frozen_views, config.seed, directory,
                            config.verbose)
        head_val = cached_dataset(cache.val, "features", config.batch_size, False)
        train_phase(head_trainer(model), cached_dataset(cache.train, "features", config.batch_size, True,
                                                        config.seed),
                    head_val, config.epochs, config.lr, "head", config.verbose, history,
                    images=len(cache.train.rows), **config.fit_options())
        if config.strategy == Strategy.FEATURES:
            return None, []
        unfrozen = unfreeze(base, top)
        if cut:
            trainer = top_trainer(model, base, cut)
            train_ds = cached_dataset(cache.train, "boundary", config.batch_size, True, config.seed)
            val = cached_dataset(cache.val, "boundary", config.batch_size, False)
        else:  # full, or no single-edge cut below the trained layers: photos every epoch
            trainer, train_ds, val = model, photos(), val_ds
        train_phase(trainer, train_ds, val, epochs, rate, str(config.strategy), config.verbose, history,
                    images=len(train_set), **config.fit_options())
        return None, unfrozen
    finally:
        shutil.rmtree(directory, ignore_errors=True)  # before the staging folder becomes the result


def weights_source(weights: str, names: list[str]) -> dict[str, Any]:
    if weights == "imagenet":
        return {"kind": "imagenet", "source": sorted({zoo.get(n).imagenet_source for n in names})}
    if weights in (None, "none"):
        return {"kind": "none"}
    return {"kind": "file", "path": str(Path(weights).resolve()), "sha256": sha256_file(weights)}


def model_card(config: FinetuneConfig, train_set: ImageSet, val_set: ImageSet, recipe: Preprocessing,
               history, metrics, unfrozen, seconds: float, teacher: dict[str, Any] | None = None) -> ModelCard:
    """The ``edgetl.json`` of a trained model (``model_sha256`` is added when the model is saved)."""
    stack = config.strategy == Strategy.STACK
    names = list(config.backbones) if stack else [config.backbone]
    return ModelCard(
        labels=train_set.classes,
        input={"name": "image", "shape": [None, *recipe.input_size, 3], "layout": "NHWC", "dtype": "float32"},
        output={"kind": "probabilities", "logits_layer": None if stack else LOGITS_LAYER},
        preprocessing=recipe.to_dict(),
        backbone="+".join(names),
        backbones=names,
        weights=weights_source(config.weights, names),
        strategy=str(config.strategy),
        unfrozen_layers=unfrozen,
        config={k: (str(v) if isinstance(v, (Path, Strategy)) else v) for k, v in dataclasses.asdict(config).items()},
        dataset={
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
        history=history,
        metrics=metrics,
        train_seconds=round(seconds, 2),
        versions=software_versions(["tensorflow", "keras"]),
        teacher=teacher,
    )
