"""Head recipes compared on one frozen-feature cache: how many cached views, label smoothing, AdamW weight
decay, longer training with early stopping; several training seeds each, on edgetl's own val split.

    python tools/recipe_features.py DATA [--views 3] [--seeds 0,1,2] [--json out.json]

The backbone runs once (``training/cache.py``, ``--views`` views per photo); every variant then trains a
fresh head (dropout 0.2 -> dense -> softmax, as ``edgetl finetune --strategy features``) on the cached
features of the first k views and is scored on the cached val features (the runtime's eval crop).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgetl import zoo  # noqa: E402
from edgetl.data import load_splits  # noqa: E402
from edgetl.training.cache import build_cache, cached_dataset  # noqa: E402
from edgetl.training.fit import train_phase  # noqa: E402

VARIANTS = {  # name: (views used, fit options, epochs)
    "1 view": (1, {}, 5),
    "2 views (default)": (2, {}, 5),
    "3 views": (3, {}, 5),
    "2 views, label smoothing 0.1": (2, {"label_smoothing": 0.1}, 5),
    "2 views, AdamW wd 0.01": (2, {"weight_decay": 0.01}, 5),
    "2 views, 15 epochs, patience 3": (2, {"patience": 3}, 15),
    "2 views, ls 0.1 + wd 0.01 + 15 ep/patience 3": (2, {"label_smoothing": 0.1, "weight_decay": 0.01,
                                                        "patience": 3}, 15),
}


def head(n_features: int, n_classes: int, seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((n_features,))
    x = keras.layers.Dropout(0.2, seed=seed)(x)
    outputs = keras.layers.Softmax()(keras.layers.Dense(n_classes)(x))
    return keras.Model(inputs, outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--json", type=Path, default=Path("recipe_features.json"))
    args = parser.parse_args()
    train, val = load_splits(args.data, 0.2, 0)
    spec = zoo.get(zoo.DEFAULT_BACKBONE)
    recipe = spec.recipe()
    base = spec.build("imagenet", recipe.input_size[0])
    base.trainable = False
    rows = []
    with tempfile.TemporaryDirectory(prefix="recipe-features-") as tmp:
        cache = build_cache(base, None, train, val, recipe, args.views, 0, Path(tmp), verbose=True)
        for name, (views, options, epochs) in VARIANTS.items():
            if views > args.views:
                continue
            split = dataclasses.replace(cache.train, features=cache.train.features[:, :views])
            accuracies = []
            for seed in map(int, args.seeds.split(",")):
                model = head(split.features.shape[-1], len(train.classes), seed)
                history: list = []
                started = time.perf_counter()
                train_phase(model, cached_dataset(split, "features", 16, True, seed),
                            cached_dataset(cache.val, "features", 16, False), epochs, 1e-3, "head", False,
                            history, **options)
                model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
                _, accuracy = model.evaluate(cached_dataset(cache.val, "features", 64, False), verbose=0)
                accuracies.append(float(accuracy))
                print(f"{name} seed {seed}: {accuracy:.4f} ({len(history)} epochs, "
                      f"{time.perf_counter() - started:.1f}s)", flush=True)
            rows.append({"variant": name, "accuracies": accuracies, "mean": float(np.mean(accuracies)),
                         "std": float(np.std(accuracies))})
    result = {"data": str(args.data), "train": len(train), "val": len(val), "views_cached": args.views,
              "cache_seconds": cache.seconds, "cache_images_per_s": cache.images_per_second, "rows": rows}
    args.json.write_text(json.dumps(result, indent=1))
    for row in rows:
        print(f"| {row['variant']} | {' / '.join(f'{a:.3f}' for a in row['accuracies'])} | "
              f"{row['mean']:.3f} ± {row['std']:.3f} |")


if __name__ == "__main__":
    main()
