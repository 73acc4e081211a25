"""`edgetl search --model`'s options: the model to search and, for one edgetl did not train, what
`edgetl export` must be told about it (the same flags and meanings as export's)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

MODEL = typer.Option(None, "--model", help="Search this model instead of fine-tuning: an .onnx file, a .keras file or SavedModel directory (state its preprocessing), or an edgetl model directory; formats x quantization x targets only.")
PREPROCESS = typer.Option(None, "--preprocess", help="--model without edgetl.json: a preset (torchvision | keras-inception | raw) or a recipe JSON file, as in `edgetl export`.")
MEAN = typer.Option(None, "--mean", help="--model: per-channel mean (as in `edgetl export`).")
STD = typer.Option(None, "--std", help="--model: per-channel std.")
SCALE = typer.Option(None, "--scale", help="--model: pixels (0..255) times this first, e.g. 1/255.")
RESIZE = typer.Option(None, "--resize", help="--model: shorter side before the centre crop (0: straight to the input size).")
CROP = typer.Option(None, "--crop", help="--model: centre crop S x S.")
CHANNEL_ORDER = typer.Option(None, "--channel-order", help="--model: RGB | BGR.")
INTERPOLATION = typer.Option(None, "--interpolation", help="--model: bilinear | bicubic | nearest.")
LABELS = typer.Option(None, "--labels", help="--model without edgetl.json: comma-separated class names or a labels file.")
OUTPUT_KIND = typer.Option(None, "--output-kind", help="--model: logits | probabilities (checked against what is detected).")


def model_options(model: Optional[Path], preprocess, mean, std, scale, resize, crop, channel_order, interpolation,
                  labels: Optional[str], output_kind: Optional[str]) -> dict:
    """SearchConfig's --model fields."""
    from ..preprocess_presets import StatedPreprocessing

    stated = StatedPreprocessing(preprocess, mean, std, scale, resize, crop, channel_order, interpolation)
    names = tuple(v.strip() for v in labels.split(",") if v.strip()) if labels else ()
    return dict(model=model, preprocessing=stated if stated.given else None, labels=names, output_kind=output_kind)
