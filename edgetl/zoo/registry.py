"""The backbone zoo's registry of small builders (timm style); the backbones are in ``backbones.py``.

Each ``BackboneSpec`` knows its default input size, its preprocessing recipe (as data, so exported
artifacts replay it without Keras), its feature width and how to build the feature extractor: a Keras
model from a normalised NHWC image to the last feature map (no pooling, no classifier).

``weights`` is ``"imagenet"``, ``"none"`` or a path to a ``.weights.h5`` file saved from a build of the
same backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UsageError
from ..preprocess import Preprocessing

# Builder signature: (input_shape, include_top, imagenet) -> keras.Model
Builder = Callable[[tuple[int, int, int], bool, bool], "object"]


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    input_size: int
    preprocessing: Preprocessing
    feature_dim: int
    builder: Builder
    imagenet_source: str  # where ImageNet weights come from, for errors and metadata
    family: str = "generic"  # topology family, read by the structured pruner
    # Smallest input side the topology takes: five stride-2 stages (Keras Applications refuse < 32).
    min_input_size: int = 32

    def build(self, weights: str = "imagenet", input_size: int | None = None,
              include_top: bool = False):
        """Build the feature extractor (or, with ``include_top``, the 1000-class logits model)."""
        size = input_size or self.input_size
        shape = (size, size, 3)
        if weights == "imagenet":
            return self.builder(shape, include_top, True)
        model = self.builder(shape, include_top, False)
        if weights not in (None, "none"):
            _load_weights_file(model, Path(weights), self.name)
        return model

    def recipe(self, input_size: int | None = None) -> Preprocessing:
        if input_size and input_size != self.input_size:
            return self.preprocessing.with_input_size(input_size)
        return self.preprocessing


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown backbone {name!r}; choose one of: {', '.join(names())}") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def _load_weights_file(model, path: Path, name: str) -> None:
    if not path.exists():
        raise UsageError(f"weights file {path} does not exist")
    try:
        model.load_weights(str(path))
    except Exception as exc:  # Keras raises ValueError/KeyError/OSError depending on the mismatch
        raise UsageError(f"weights file {path} does not fit backbone {name}: {exc}".splitlines()[0]) from None
