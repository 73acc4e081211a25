"""Graph pieces shared by finetune (stacking) and export (uint8 input): plain Keras layers only, so
every converter (tf2onnx, TFLite, OpenVINO) takes them."""

from __future__ import annotations

import numpy as np

from .preprocess import Preprocessing


def normalization_layer(recipe: Preprocessing, name: str):
    """A frozen 1x1 convolution computing the recipe's channel reorder and ``(x - mean) / std``.

    A convolution rather than a Lambda/Rescaling: it serialises without custom code, folds into the
    next convolution in every runtime, and can express the RGB->BGR swap of caffe-style backbones.
    """
    import keras

    scale, shift = recipe.scale_shift
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    for out_channel in range(3):
        in_channel = 2 - out_channel if recipe.channel_order == "BGR" else out_channel
        kernel[0, 0, in_channel, out_channel] = scale[out_channel]
    layer = keras.layers.Conv2D(3, 1, use_bias=True, trainable=False, name=name)
    layer.build((None, None, None, 3))
    layer.set_weights([kernel, shift.astype(np.float32)])
    return layer
