"""Preprocessing a user states for a model edgetl did not train: named presets (kept as data, as timm
keeps its ``pretrained_cfg``), a recipe JSON file in the sidecar's own ``preprocessing`` form, or
flags (``--mean --std/--scale --resize --crop --channel-order --interpolation``).

Nothing here guesses: a model without ``edgetl.json`` and without one of these is refused
(``require_stated``). Like ``preprocess``, this module never imports TensorFlow.

Flag semantics (torchvision's own): pixels are 0..255, multiplied by ``--scale`` (default 1; 1/255
for models taking 0..1), then ``(x - mean) / std`` with mean/std in that scaled range; ``--resize N``
sets the shorter side to N, ``--crop S`` centre-crops S x S (the model input). The recipe stores the
same thing in 0..255 units: mean/scale and std/scale.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError
from .preprocess import INTERPOLATIONS, DecodeRules, Preprocessing

# name -> how pixels are made; mean/std on the ``scale``d range, ``crop_pct`` = crop / resize (timm).
PRESETS: dict[str, dict[str, Any]] = {
    # torchvision / timm ImageNet models: 0..1, ImageNet mean/std, Resize(256) + CenterCrop(224), bilinear
    "torchvision": {"scale": 1 / 255, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                    "interpolation": "bilinear", "crop_pct": 0.875},
    # keras.applications "tf" mode (Inception, Xception, MobileNet v1/v2): -1..1
    "keras-inception": {"scale": 1 / 255, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                        "interpolation": "bilinear", "crop_pct": 0.875},
    # the model normalises inside (or wants 0..255 as they are)
    "raw": {"scale": 1.0, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0),
            "interpolation": "bilinear", "crop_pct": 0.875},
}
FLAGS = "--preprocess PRESET|FILE (presets: " + ", ".join(PRESETS) + ") or --mean/--std/--scale"
CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NHWC", "NCHW")


@dataclass(frozen=True)
class StatedPreprocessing:
    """What the command line said about the pixels; ``recipe(input_size)`` turns it into a recipe."""

    preprocess: str | None = None  # a preset name or a recipe JSON file
    mean: str | None = None  # "0.485,0.456,0.406" (or one number for all channels)
    std: str | None = None
    scale: str | None = None  # "1/255" or "0.00392"
    resize: int | None = None  # shorter side; 0: resize straight to the input size, no crop
    crop: int | None = None  # centre crop = the model's input size
    channel_order: str | None = None
    interpolation: str | None = None

    @property
    def given(self) -> bool:
        return any(getattr(self, f.name) is not None for f in dataclasses.fields(self))

    @property
    def normalisation_given(self) -> bool:
        return any(v is not None for v in (self.preprocess, self.mean, self.std, self.scale))

    def validate(self) -> None:
        """Everything checkable without the model (flags' types, the file's fields)."""
        self._base()
        for flag, value in (("--mean", self.mean), ("--std", self.std)):
            if value is not None:
                _numbers(value, flag)
        if self.scale is not None:
            _scale(self.scale)
        for flag, value in (("--resize", self.resize), ("--crop", self.crop)):
            if value is not None and value < (0 if flag == "--resize" else 1):
                raise UsageError(f"{flag} must be a positive number of pixels, got {value}")
        if self.channel_order is not None and self.channel_order.upper() not in CHANNEL_ORDERS:
            raise UsageError(f"--channel-order must be RGB or BGR, got {self.channel_order!r}")
        if self.interpolation is not None and self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"--interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")

    def _base(self) -> tuple[dict[str, Any] | None, Preprocessing | None]:
        """(preset entry, recipe from a JSON file): at most one of them."""
        if self.preprocess is None:
            return None, None
        if self.preprocess in PRESETS:
            return PRESETS[self.preprocess], None
        path = Path(self.preprocess)
        if not path.is_file():
            raise UsageError(f"--preprocess {self.preprocess!r}: neither a preset ({', '.join(PRESETS)}) "
                             f"nor a recipe JSON file")
        return None, recipe_from_file(path)

    def recipe(self, model_size: tuple[int, int] | None, input_size: int | None = None,
               layout: str = "NHWC") -> Preprocessing:
        """The recipe at the model's input size (``model_size``: its static H, W; else --crop or
        --input-size). Flags override the preset or file they come with."""
        preset, from_file = self._base()
        size = _input_size(model_size, self.crop, input_size, from_file)
        if from_file is not None:
            recipe = dataclasses.replace(from_file, layout=layout)
            if tuple(recipe.input_size) != size:
                raise UsageError(f"--preprocess {self.preprocess}: input_size {list(recipe.input_size)} "
                                 f"but the model takes {size[0]}x{size[1]}")
        else:
            preset = preset or PRESETS["raw"] if self.normalisation_given else None
            if preset is None:
                raise UsageError(f"no preprocessing stated for a model without edgetl.json: pass {FLAGS}")
            scale = preset["scale"]
            recipe = Preprocessing(input_size=size, resize_shorter=round(min(size) / preset["crop_pct"]),
                                   interpolation=preset["interpolation"],
                                   mean=tuple(m / scale for m in preset["mean"]),
                                   std=tuple(s / scale for s in preset["std"]), layout=layout)
        return self._with_flags(recipe)

    def _with_flags(self, recipe: Preprocessing) -> Preprocessing:
        changes: dict[str, Any] = {}
        if self.mean is not None or self.std is not None or self.scale is not None:
            scale = _scale(self.scale) if self.scale is not None else 1.0
            # A flag given alone keeps the other from the preset/file, in that recipe's 0..255 units.
            changes["mean"] = (tuple(v / scale for v in _numbers(self.mean, "--mean")) if self.mean is not None
                               else (recipe.mean if self.preprocess else (0.0, 0.0, 0.0)))
            changes["std"] = (tuple(v / scale for v in _numbers(self.std, "--std")) if self.std is not None
                              else (recipe.std if self.preprocess and self.scale is None else (1 / scale,) * 3))
        if self.resize is not None:
            changes["resize_shorter"] = self.resize or None
        if self.channel_order is not None:
            changes["channel_order"] = self.channel_order.upper()
        if self.interpolation is not None:
            changes["interpolation"] = self.interpolation
        return dataclasses.replace(recipe, **changes)


def _input_size(model_size, crop, input_size, from_file) -> tuple[int, int]:
    for value, what in ((crop, "--crop"), (input_size, "--input-size")):
        if value and model_size and (value, value) != tuple(model_size):
            raise UsageError(f"{what} {value} but the model takes {model_size[0]}x{model_size[1]}")
    if model_size:
        return tuple(model_size)
    if crop or input_size:
        return (crop or input_size,) * 2
    if from_file is not None:
        return tuple(from_file.input_size)
    raise UsageError("the model's input size is not fixed: pass --crop or --input-size")


def _numbers(text: str, flag: str) -> tuple[float, float, float]:
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes 1 or 3 comma-separated numbers, got {text!r}") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise UsageError(f"{flag} takes 1 or 3 comma-separated numbers, got {text!r}")
    if flag == "--std" and min(values) <= 0:
        raise UsageError(f"--std must be positive, got {text!r}")
    return tuple(values)


def _scale(text: str) -> float:
    try:
        if "/" in str(text):
            top, bottom = str(text).split("/")
            value = float(top) / float(bottom)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"--scale takes a number such as 1/255 or 0.0039, got {text!r}") from None
    if value <= 0:
        raise UsageError(f"--scale must be positive, got {text!r}")
    return value


# -- a recipe JSON file, validated field by field -------------------------------------------------
def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_field(name: str, value: Any) -> str | None:
    """Why ``value`` is not a valid ``preprocessing.<name>`` (None: it is)."""
    if name == "input_size":
        ok = isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                  and v > 0 for v in value)
        return None if ok else "a list of 2 positive integers [height, width]"
    if name == "resize_shorter":
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)
        return None if ok else "a positive integer or null"
    if name in ("mean", "std"):
        ok = isinstance(value, list) and len(value) == 3 and all(_is_number(v) for v in value)
        if ok and name == "std" and min(value) <= 0:
            ok = False
        return None if ok else f"a list of 3 numbers{' > 0' if name == 'std' else ''} (0..255 units)"
    choices = {"interpolation": INTERPOLATIONS, "channel_order": CHANNEL_ORDERS, "layout": LAYOUTS}.get(name)
    if choices:
        return None if value in choices else f"one of {', '.join(choices)}"
    return None


def validate_recipe_dict(data: Any, where: str) -> Preprocessing:
    """A ``preprocessing`` mapping (the sidecar's form) -> recipe, or one line naming the bad field."""
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a JSON object (the sidecar's preprocessing form), "
                         f"got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(Preprocessing)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{where}: unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}")
    for required in ("input_size", "mean", "std"):
        if required not in data:
            raise UsageError(f"{where}: {required} is required")
    for name, value in data.items():
        problem = _check_field(name, value)
        if problem:
            raise UsageError(f"{where}: {name} must be {problem}, got {json.dumps(value)}")
    if "decode" in data and data["decode"] is not None:
        if not isinstance(data["decode"], dict):
            raise UsageError(f"{where}: decode must be an object, got {json.dumps(data['decode'])}")
        try:
            DecodeRules.from_dict(data["decode"])
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{where}: {exc}") from None
    return Preprocessing.from_dict(data)


def recipe_from_file(path: Path) -> Preprocessing:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--preprocess {path}: cannot read ({exc})") from None
    except ValueError as exc:
        raise UsageError(f"--preprocess {path}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("preprocessing"), dict):
        data = data["preprocessing"]  # a whole sidecar or edgetl.json: its preprocessing block
    return validate_recipe_dict(data, f"--preprocess {path}")
