"""Quantization-aware fine-tuning for INT8 export (``export -q int8 --qat-epochs N``), in Keras 3 itself
(TF-MOT refuses Keras 3 models and NNCF dropped TensorFlow).

The export graph (logits, or probabilities for stacks) is rebuilt flat, with every BatchNormalization
folded into the convolution or dense layer before it, and fake quantization where the exporters
quantize (``exporting.backends``):

* weights: per output channel, symmetric, narrow range (int8 -127..127, scale max|w| / 127) on the
  BN-folded kernels: what ONNX Runtime (``WeightSymmetric``), the TFLite converter and NNCF all write;
* activations: one asymmetric 8-bit range per tensor (ORT uint8, TFLite int8 with a zero point: the
  same grid) on the input and on every op output that is not fused away (a convolution's output
  before its BN or ReLU/ReLU6, a BN's before its activation); ranges start at PTQ's MinMax of the
  calibration images and then train with the weights (``fake_quant_with_min_max_vars`` has gradients
  for both ends; at the fine-tuning learning rate they move little).

The loss is label-free distillation: KL divergence from the FP32 model's own output distribution on the
calibration images (and their mirror images), so it optimises exactly the agreement the parity gate
measures and needs no labels (zero-shot heads included). How the learned weights and ranges reach each
format: ``exporting.qat_formats``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UsageError

QAT_LR = 3e-6  # Adam; 1e-5 diverged on a converged model (tools/RESULTS-accuracy.md, "D. QAT")
QAT_BATCH = 8
HELD_OUT_FRACTION = 5  # one calibration image in five chooses the epoch (``quantization_aware``)
LOSS = "KL(FP32 teacher softmax || fake-quant student softmax), T=1, calibration images + mirrors, no labels"

_CONV_KINDS = ("Conv2D", "DepthwiseConv2D", "Dense")
_PASS_THROUGH = ("Dropout", "SpatialDropout2D", "GaussianNoise", "Flatten", "Reshape", "Identity")


def _fake_quant_layers():
    """The two Keras layers, defined on first use (so importing this module does not load TensorFlow)."""
    global ActivationFakeQuant, FoldedLinear
    if "ActivationFakeQuant" in globals():
        return ActivationFakeQuant, FoldedLinear
    import keras
    import tensorflow as tf

    class ActivationFakeQuant(keras.layers.Layer):
        """8-bit asymmetric per-tensor fake quantization with a learned [low <= 0 <= high] range."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.enabled = True  # off while the float ranges are measured

        def build(self, input_shape):
            non_negative = keras.constraints.NonNeg()  # the range must hold 0 (zero is exact in int8)
            self.low = self.add_weight(name="low", shape=(), initializer="zeros",
                                       constraint=lambda v: -non_negative(-v))
            self.high = self.add_weight(name="high", shape=(), initializer="ones",
                                        constraint=non_negative)

        def call(self, x):
            if not self.enabled:
                return x
            return tf.quantization.fake_quant_with_min_max_vars(x, self.low.value, self.high.value, num_bits=8)

        def compute_output_spec(self, x):
            # Dense, as the op computes it: Keras marks ``tensor * constant`` (MobileNetV3's hard sigmoid)
            # sparse, and tracing call() on a sparse placeholder fails inside the TF op.
            return keras.KerasTensor(x.shape, x.dtype)

        def range(self) -> tuple[float, float]:
            return float(self.low.numpy()), float(self.high.numpy())

        def set_range(self, low: float, high: float) -> None:
            low = min(float(low), 0.0)
            self.low.assign(low)
            self.high.assign(max(float(high), 0.0, low + 1e-6))

    class FoldedLinear(keras.layers.Layer):
        """A Conv2D / DepthwiseConv2D / Dense with its BN folded in (kernel and bias), computing with
        fake-quantized weights while ``quantize_weights`` is on."""

        def __init__(self, kind: str, kernel: np.ndarray, bias: np.ndarray, strides=(1, 1), padding="valid",
                     dilation=(1, 1), activation=None, **kwargs):
            super().__init__(**kwargs)
            self.kind, self.strides, self.padding, self.dilation = kind, tuple(strides), padding.upper(), tuple(dilation)
            self.activation = keras.activations.get(activation)
            self.initial = (kernel.astype(np.float32), bias.astype(np.float32))
            self.quantize_weights = True

        def build(self, input_shape):
            self.kernel = self.add_weight(name="kernel", shape=self.initial[0].shape,
                                          initializer=keras.initializers.Constant(self.initial[0]))
            self.bias = self.add_weight(name="bias", shape=self.initial[1].shape,
                                        initializer=keras.initializers.Constant(self.initial[1]))

        def quantized_kernel(self):
            kernel = self.kernel.value
            shape = kernel.shape
            flat = tf.reshape(kernel, (*shape[:2], -1)) if self.kind == "DepthwiseConv2D" else kernel
            if self.kind == "Dense":  # per tensor: TFLite's FullyConnected (ORT's Gemm per channel is finer)
                peak = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(kernel)), 1e-12))
                return tf.quantization.fake_quant_with_min_max_vars(kernel, -peak, peak, num_bits=8,
                                                                    narrow_range=True)
            peak = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(flat), axis=list(range(flat.shape.rank - 1))),
                                               1e-12))
            quantized = tf.quantization.fake_quant_with_min_max_vars_per_channel(flat, -peak, peak, num_bits=8,
                                                                                 narrow_range=True)
            return tf.reshape(quantized, shape)

        def call(self, x):
            kernel = self.quantized_kernel() if self.quantize_weights else self.kernel.value
            if self.kind == "Conv2D":
                y = tf.nn.conv2d(x, kernel, strides=(1, *self.strides, 1), padding=self.padding,
                                 dilations=(1, *self.dilation, 1))
            elif self.kind == "DepthwiseConv2D":
                y = tf.nn.depthwise_conv2d(x, kernel, strides=(1, *self.strides, 1), padding=self.padding,
                                           dilations=self.dilation)
            else:
                y = tf.matmul(x, kernel)
            return self.activation(tf.nn.bias_add(y, self.bias.value))

    globals().update(ActivationFakeQuant=ActivationFakeQuant, FoldedLinear=FoldedLinear)
    return ActivationFakeQuant, FoldedLinear


# -- the flat graph ------------------------------------------------------------------------------------
@dataclass
class _Step:
    layer: Any
    inputs: list[int]
    outputs: list[int]
    node: Any = None  # the Keras node: how the layer was called (constants, keyword arguments)

    def call(self, tensors: dict[int, Any]):
        """The layer called as in the source graph, its input tensors replaced: an op called with a
        constant (MobileNetV3's ``x + 3``, ``x * (1 / 6)``) keeps it."""
        originals = self.node.input_tensors
        args, kwargs = self.node.arguments.fill_in({id(t): tensors[k] for t, k in zip(originals, self.inputs)})
        return self.layer(*args, **kwargs)


def _flat_steps(model, feed: dict[int, int]) -> tuple[list[_Step], list[int]]:
    """Every layer call of ``model`` in order, nested functional models inlined; tensors as keys."""
    alias = dict(feed)
    steps: list[_Step] = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input or node.operation is None:
                continue
            inputs = [alias.get(id(t), id(t)) for t in node.input_tensors]
            op = node.operation
            if hasattr(op, "_nodes_by_depth"):  # a nested Functional: inline it
                inner, outputs = _flat_steps(op, {id(t): k for t, k in zip(op.inputs, inputs)})
                steps += inner
                alias.update({id(t): k for t, k in zip(node.outputs, outputs)})
            else:
                steps.append(_Step(op, inputs, [id(t) for t in node.outputs], node))
    return steps, [alias.get(id(t), id(t)) for t in model.outputs]


def _is_fusable_activation(layer) -> bool:
    kind = type(layer).__name__
    if kind == "ReLU":
        return float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0 and (
            layer.max_value is None or float(layer.max_value) == 6.0)
    if kind == "Activation":
        return getattr(layer.activation, "__name__", "") in ("relu", "relu6")
    return False


def _has_plain_activation(layer) -> bool:
    return getattr(getattr(layer, "activation", None), "__name__", "linear") == "linear"


def _folded(layer, bn) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) of ``layer`` with the inference-mode ``bn`` after it folded in."""
    kernel = np.asarray(layer.kernel.numpy(), np.float64)
    channels = kernel.shape[-1] * (kernel.shape[-2] if type(layer).__name__ == "DepthwiseConv2D" else 1)
    bias = np.asarray(layer.bias.numpy(), np.float64) if getattr(layer, "use_bias", False) else np.zeros(channels)
    if bn is None:
        return kernel, bias
    if bn.axis not in (-1, 1 if type(layer).__name__ == "Dense" else 3):
        raise UsageError(f"--qat-epochs: {bn.name} normalises axis {bn.axis}, not the channels (NHWC only)")
    gamma = bn.gamma.numpy() if bn.scale else np.ones(channels)
    beta = bn.beta.numpy() if bn.center else np.zeros(channels)
    scale = gamma / np.sqrt(bn.moving_variance.numpy().astype(np.float64) + bn.epsilon)
    shift = beta - bn.moving_mean.numpy() * scale
    kernel = kernel * scale.reshape(kernel.shape[-2:] if type(layer).__name__ == "DepthwiseConv2D" else (-1,))
    return kernel, bias * scale + shift


@dataclass
class QatGraph:
    """The fake-quant model and what is needed to train and carry it."""

    model: Any
    quantizers: list[Any] = field(default_factory=list)  # ActivationFakeQuant layers, input first
    folded: int = 0  # BN layers folded

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {q.name: q.range() for q in self.quantizers}

    def initialise_ranges(self, probe, calib_inputs: np.ndarray, batch: int, init: str = "minmax") -> None:
        """Each range from the float graph (quantizers off): ``minmax`` (PTQ's MinMax: QAT starts where
        post-training INT8 is) or ``batch-mean``, the mean over calibration batches of the batch min and
        max (TF-MOT's moving-average ranges, converged), which clips rare extremes: it started one
        photo worse on the zero-shot set (tools/RESULTS-accuracy.md, "D. QAT")."""
        for quantizer in self.quantizers:
            quantizer.enabled = False
        lows, highs = [[] for _ in self.quantizers], [[] for _ in self.quantizers]
        try:
            for start in range(0, len(calib_inputs), batch):
                values = probe.predict_on_batch(calib_inputs[start:start + batch])
                for i, value in enumerate(values if isinstance(values, list) else [values]):
                    lows[i].append(float(np.min(value)))
                    highs[i].append(float(np.max(value)))
        finally:
            for quantizer in self.quantizers:
                quantizer.enabled = True
        pick_low, pick_high = (np.min, np.max) if init == "minmax" else (np.mean, np.mean)
        for quantizer, low, high in zip(self.quantizers, lows, highs):
            quantizer.set_range(pick_low(low), pick_high(high))

    @contextlib.contextmanager
    def float_weights(self):
        """Weights unquantized in the traced graph (ONNX: ORT quantizes them itself, on the same grid)."""
        linear = [layer for layer in self.model.layers if hasattr(layer, "quantize_weights")]
        for layer in linear:
            layer.quantize_weights = False
        try:
            yield self.model
        finally:
            for layer in linear:
                layer.quantize_weights = True


def build_qat_graph(float_model, calib_inputs: np.ndarray, batch: int = QAT_BATCH,
                    range_init: str = "minmax") -> QatGraph:
    """``float_model`` (a flat or nested functional Keras model, NHWC) rebuilt with BN folded and fake
    quantization; activation ranges initialised from ``calib_inputs`` (``QatGraph.initialise_ranges``)."""
    import keras

    ActivationFakeQuant, FoldedLinear = _fake_quant_layers()
    if len(float_model.inputs) != 1 or len(float_model.outputs) != 1:
        raise UsageError("--qat-epochs needs a model with one input and one output")
    source_input = float_model.inputs[0]
    steps, (output_key,) = _flat_steps(float_model, {id(source_input): id(source_input)})
    consumers: dict[int, list[_Step]] = {}
    for step in steps:
        for key in step.inputs:
            consumers.setdefault(key, []).append(step)

    def sole_consumer(key):
        users = consumers.get(key, [])
        return users[0] if len(users) == 1 and key != output_key else None

    def kind(step):
        return type(step.layer).__name__

    folds = {}  # id(conv step) -> its BN step
    for step in steps:
        after = sole_consumer(step.outputs[0])
        if kind(step) in _CONV_KINDS and _has_plain_activation(step.layer) and after is not None \
                and kind(after) == "BatchNormalization":
            folds[id(step)] = after
    folded_bns = {id(bn) for bn in folds.values()}

    # Which outputs carry a quantizer: all but the ones fused into the next op.
    def fused_into_next(step) -> bool:
        after = sole_consumer(step.outputs[-1])
        if id(step) in folds:
            return True
        fusable_producer = kind(step) in (*_CONV_KINDS, "Add", "BatchNormalization") and _has_plain_activation(step.layer)
        return after is not None and fusable_producer and _is_fusable_activation(after)

    quantizers: dict[int, Any] = {}  # producer output key -> its quantizer
    before: list[Any] = []  # the float tensor each quantizer receives, for range initialisation
    inputs = keras.Input(source_input.shape[1:], dtype=source_input.dtype, name="image")

    def quantize(key, tensor, name):
        quantizers[key] = ActivationFakeQuant(name=name)
        before.append(tensor)
        return quantizers[key](tensor)

    tensors = {id(source_input): quantize(id(source_input), inputs, "input_fq")}
    for step in steps:
        args = [tensors[k] for k in step.inputs]
        layer, name = step.layer, step.layer.name
        if id(step) in folded_bns or kind(step) in _PASS_THROUGH:
            tensors.update({key: args[0] for key in step.outputs})
            continue
        if kind(step) in _CONV_KINDS and (kind(step) != "Conv2D" or layer.groups == 1):
            if getattr(layer, "data_format", "channels_last") != "channels_last":
                raise UsageError(f"--qat-epochs: {name} is channels_first; only NHWC models are supported")
            bn = folds.get(id(step))
            kernel, bias = _folded(layer, bn.layer if bn else None)
            conv = kind(step) != "Dense"
            out = FoldedLinear(kind(step), kernel, bias, strides=layer.strides if conv else (1, 1),
                               padding=layer.padding if conv else "valid",
                               dilation=layer.dilation_rate if conv else (1, 1),
                               activation=keras.activations.serialize(layer.activation),
                               name=f"{name}_folded")(args[0])
        elif kind(step) == "BatchNormalization":
            out = layer(args[0], training=False)
        else:
            out = step.call(tensors)
        if not isinstance(out, (list, tuple)) and not fused_into_next(step):
            out = quantize(step.outputs[0], out, f"{name}_fq")
        tensors.update({key: out for key in step.outputs})
    graph = QatGraph(keras.Model(inputs, tensors[output_key], name="qat_model"), list(quantizers.values()),
                     len(folds))
    graph.initialise_ranges(keras.Model(inputs, before), calib_inputs, batch, range_init)
    return graph


# -- training ------------------------------------------------------------------------------------------
def distillation_loss(probabilities: bool):
    """KL(teacher || student) on the output distribution; logits are softmaxed first."""
    import keras

    def loss(teacher, student):
        if not probabilities:
            teacher, student = keras.ops.softmax(teacher), keras.ops.softmax(student)
        teacher = keras.ops.clip(teacher, 1e-7, 1.0)
        student = keras.ops.clip(student, 1e-7, 1.0)
        return keras.ops.sum(teacher * (keras.ops.log(teacher) - keras.ops.log(student)), axis=-1)

    return loss


def quantization_aware(float_model, calib_inputs: np.ndarray, epochs: int, probabilities: bool = False,
                       lr: float = QAT_LR, batch: int = QAT_BATCH, seed: int = 0,
                       verbose: bool = False) -> tuple[QatGraph, dict]:
    """Fine-tune the fake-quant graph of ``float_model`` for up to ``epochs`` on ``calib_inputs`` (model
    inputs, plus their mirror images) towards ``float_model``'s own outputs. A fifth of the images is held
    out and the weights of the epoch with the lowest held-out loss are kept, epoch 0 (PTQ's ranges, no
    training) included: on few images QAT overfits within an epoch or two, and then the artifact must
    not be worse than where it started. Returns the graph and the sidecar's ``qat`` block."""
    import keras

    if epochs < 1:
        raise UsageError(f"--qat-epochs must be >= 1, got {epochs}")
    keras.utils.set_random_seed(seed)
    order = np.random.default_rng(seed).permutation(len(calib_inputs))
    held = order[:max(1, len(order) // HELD_OUT_FRACTION)] if len(order) > 1 else order
    train = np.setdiff1d(order, held) if len(order) > 1 else order

    def with_mirrors(rows):
        chosen = calib_inputs[np.sort(rows)].astype(np.float32)
        return np.concatenate([chosen, chosen[:, :, ::-1]])

    images, held_images = with_mirrors(train), with_mirrors(held)
    teacher, held_teacher = (np.concatenate([float_model.predict_on_batch(x[i:i + batch]) for i in range(0, len(x), batch)])
                             for x in (images, held_images))
    graph = build_qat_graph(float_model, calib_inputs, batch)
    loss = distillation_loss(probabilities)

    def held_loss() -> float:
        return float(np.mean(loss(held_teacher, graph.model.predict(held_images, batch_size=batch, verbose=0))))

    graph.model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, jit_compile=False)
    held_losses, train_losses = [held_loss()], []
    best = (held_losses[0], 0, graph.model.get_weights())
    for epoch in range(1, epochs + 1):
        history = graph.model.fit(images, teacher, epochs=1, batch_size=batch, shuffle=True, verbose=0)
        train_losses.append(float(history.history["loss"][0]))
        held_losses.append(held_loss())
        if held_losses[-1] < best[0]:
            best = (held_losses[-1], epoch, graph.model.get_weights())
    graph.model.set_weights(best[2])
    if verbose:
        from ..console import say

        say(f"QAT: {epochs} epoch(s) on {len(images)} images; held-out ({len(held_images)}) distillation loss "
            f"{held_losses[0]:.5f} -> {best[0]:.5f} (epoch {best[1]} kept)")
    details = {"epochs": int(epochs), "kept_epoch": best[1], "loss": LOSS, "optimizer": f"Adam lr {lr:g}",
               "batch_size": batch, "images": int(len(images)), "held_out_images": int(len(held_images)),
               "seed": seed, "bn_folded": graph.folded, "activation_quantizers": len(graph.quantizers),
               "range_init": "MinMax of the calibration images (PTQ's), then trained with the weights",
               "weights": "per-channel symmetric int8 (-127..127) fake quant on BN-folded kernels",
               "activation_ranges": {name: [round(low, 7), round(high, 7)] for name, (low, high) in graph.ranges().items()},
               "distillation_loss": {"held_out_per_epoch": [round(v, 6) for v in held_losses],
                                     "train_per_epoch": [round(v, 6) for v in train_losses]}}
    return graph, details
