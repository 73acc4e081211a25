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
import time
from pathlib import Path
from typing import Any

from .. import zoo
from ..choices import Strategy
from ..console import say
from ..data import ImageSet, load_pixels, load_splits, make_dataset
from ..errors import UsageError
from ..metadata import ModelCard, atomic_directory, sha256_file, software_versions
from ..preprocess import Preprocessing
from .builders import build_classifier, build_stack, unfreeze
from .config import BACKBONE_LAYER, LOGITS_LAYER, FinetuneConfig, TrainedModel
from .distill import train_distilled
from .fit import evaluate, train_phase
from .io import save_model_dir


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
    train_ds = make_dataset(train_set, recipe, config.batch_size, True, config.seed,
                            pixels=load_pixels(train_set.paths, recipe, training=True))
    val_ds = make_dataset(val_set, recipe, config.batch_size, False) if len(val_set) else None

    history: list[dict[str, float]] = []
    teacher_info = None
    unfrozen: list[str] = []
    if config.strategy == Strategy.DISTILL:
        teacher_info, unfrozen = train_distilled(config, model, train_set, val_set, recipe, history)
    else:
        train_phase(model, train_ds, val_ds, config.epochs, config.lr, "head", config.verbose, history)
    if config.strategy in (Strategy.FREEZE, Strategy.FULL):
        top, epochs, rate = config.second_phase(config.strategy)
        unfrozen = unfreeze(base, top)
        train_phase(model, train_ds, val_ds, epochs, rate, str(config.strategy), config.verbose, history)

    metrics = evaluate(model, val_ds) if val_ds is not None else {}
    card = model_card(config, train_set, val_set, recipe, history, metrics, unfrozen,
                      time.perf_counter() - started, teacher=teacher_info or None)
    with atomic_directory(config.out, inputs=config.inputs(), verb="finetune") as tmp:
        card = save_model_dir(tmp, model, card, history, title=f"{card.backbone} ({config.strategy})")
    say(f"wrote {config.out} (val accuracy {metrics.get('val_accuracy', float('nan')):.3f})", config.verbose)
    return TrainedModel(Path(config.out), model, card.to_dict(), history)


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
