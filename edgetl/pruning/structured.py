"""Structured (channel) pruning: remove whole channels and rebuild a narrower Keras model.

A *channel group* is a convolution whose output channels flow, through channel-wise layers only
(BatchNormalization, activations, padding, pooling, depthwise convolution), into exactly one other
convolution and nowhere else. Removing channel ``c`` then means: output filter ``c`` of the source
conv, entry ``c`` of every channel-wise layer on the way, input channel ``c`` of the consumer conv.
Nothing else in the graph sees those channels, so shapes stay consistent; in particular residual
``Add``s are never on such a path, so only the EXPANDED channels of inverted-residual blocks go
(expand conv -> BN -> ReLU6 -> [pad] -> depthwise -> BN -> ReLU6 -> project conv), and in plain conv
stacks (VGG) a conv's outputs with the next conv's inputs.

The groups are found from the model's own graph (its functional config), not from hard-coded layer
names, then filtered by the zoo's topology family: ``inverted_residual`` keeps the groups whose source
is an expand conv (name containing ``expand``: ``block_N_expand`` in MobileNetV2,
``blockXY_expand_conv`` in EfficientNet-Lite) and whose path has a depthwise conv; ``plain_conv``
keeps every group.

Rebuild: ``keras.models.clone_model(..., recursive=True)`` walks the original graph (the nested
``backbone`` model included, and with it the recorded ``training=False`` call) and re-creates each
layer from its config with ``filters`` changed where channels go; then every weight is copied over,
sliced along the channel axes. Layer names and the classifier structure are kept as they were.

Before recovery fine-tuning, ``reconstruct_consumers`` refits each pointwise projection by least
squares so the narrower block reproduces the original block's output (ThiNet-style). On
EfficientNet-Lite0 at 50% of the expanded channels this alone takes ants/bees val accuracy from 51%
(one-shot) back to 88-92% (original 94%); a few recovery epochs do the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UsageError

FAMILIES = ("inverted_residual", "plain_conv")
IMPORTANCE = ("l1", "bn")
# Layers that act on each channel independently (channel c in -> channel c out).
CHANNELWISE = {"BatchNormalization", "ReLU", "Activation", "ZeroPadding2D", "MaxPooling2D",
               "AveragePooling2D", "Dropout", "LeakyReLU", "ELU", "DepthwiseConv2D"}


@dataclass
class ChannelGroup:
    model_name: str  # the (possibly nested) functional model holding the layers
    source: str  # conv whose output channels go
    chain: list[str]  # channel-wise layers between source and consumer
    consumer: str  # conv whose input channels go
    channels: int
    removed: list[int] = field(default_factory=list)

    @property
    def keep(self) -> np.ndarray:
        return np.setdiff1d(np.arange(self.channels), np.asarray(self.removed, int))


# -- graph analysis ---------------------------------------------------------------------------------
def _tensor_sources(value) -> list[str]:
    """Names of layers whose outputs appear in a serialised call argument."""
    found = []
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            found.append(value["config"]["keras_history"][0])
        else:
            for item in value.values():
                found += _tensor_sources(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            found += _tensor_sources(item)
    return found


def _output_names(spec) -> set[str]:
    # output_layers is [name, node, index] or a list of those.
    if isinstance(spec, (list, tuple)) and spec and isinstance(spec[0], str):
        return {spec[0]}
    names: set[str] = set()
    for item in spec or []:
        names |= _output_names(item)
    return names


def _is_functional(layer) -> bool:
    return type(layer).__name__ == "Functional" or (
        hasattr(layer, "layers") and hasattr(layer, "_run_through_graph"))


def channel_groups(model) -> list[ChannelGroup]:
    """All channel groups of ``model`` and of the functional models nested in it."""
    groups: list[ChannelGroup] = []
    for layer in model.layers:
        if _is_functional(layer):
            groups += channel_groups(layer)
    config = model.get_config()
    if "layers" not in config:
        return groups
    classes, consumers = {}, {}
    for entry in config["layers"]:
        classes[entry["name"]] = (entry["class_name"], entry["config"])
        consumers.setdefault(entry["name"], [])
        for source in _tensor_sources(entry.get("inbound_nodes", [])):
            consumers.setdefault(source, []).append(entry["name"])
    outputs = _output_names(config.get("output_layers"))

    def is_plain_conv(name):
        cls, cfg = classes[name]
        return cls == "Conv2D" and cfg.get("groups", 1) == 1

    for name in classes:
        if not is_plain_conv(name):
            continue
        chain, current, consumer = [], name, None
        while current not in outputs and len(consumers[current]) == 1:
            nxt = consumers[current][0]
            cls, cfg = classes[nxt]
            if is_plain_conv(nxt):
                consumer = nxt
                break
            if cls not in CHANNELWISE or (cls == "DepthwiseConv2D" and cfg.get("depth_multiplier", 1) != 1):
                break
            chain.append(nxt)
            current = nxt
        if consumer:
            groups.append(ChannelGroup(model.name, name, chain, consumer, int(classes[name][1]["filters"])))
    return groups


def family_groups(model, family: str) -> list[ChannelGroup]:
    groups = channel_groups(model)
    if family == "inverted_residual":
        def has_depthwise(group):
            sub = _find_model(model, group.model_name)
            return any(type(sub.get_layer(n)).__name__ == "DepthwiseConv2D" for n in group.chain)

        return [g for g in groups if "expand" in g.source and has_depthwise(g)]
    if family == "plain_conv":
        return groups
    raise UsageError(f"structured pruning does not support topology family {family!r}")


def _find_model(model, name: str):
    if model.name == name:
        return model
    for layer in model.layers:
        if _is_functional(layer):
            found = _find_model(layer, name)
            if found is not None:
                return found
    return None


# -- channel selection ------------------------------------------------------------------------------
def importance(model, group: ChannelGroup, method: str) -> np.ndarray:
    """Per-channel importance: L1 norm of the source conv's filters, or |gamma| of the first BN."""
    sub = _find_model(model, group.model_name)
    if method == "bn":
        for name in group.chain:
            layer = sub.get_layer(name)
            if type(layer).__name__ == "BatchNormalization" and layer.scale:
                return np.abs(layer.gamma.numpy())
        raise UsageError(f"--importance bn needs a BatchNormalization after {group.source}; "
                         f"this backbone has none there, use --importance l1")
    kernel = sub.get_layer(group.source).kernel.numpy()
    return np.abs(kernel).sum(axis=(0, 1, 2))


# Kept channels are rounded UP to a multiple of this: INT8 CPU kernels work on channel blocks, and a
# ragged width runs their slow tail path. Lite0 at 60% (96 -> 39 kept, 144 -> 58, ...): ONNX Runtime INT8
# 2.3-2.6 ms ragged (no faster than unpruned) vs 1.42-1.46 ms rounded to 8; TFLite (XNNPACK) INT8 is
# 1.9-2.0x faster than unpruned either way; 16 was no faster than 8 on an AVX-512 VNNI CPU
# (tools/RESULTS-search.md, "Kept channels").
CHANNEL_MULTIPLE = 8


def kept_channels(channels: int, sparsity: float, multiple: int = CHANNEL_MULTIPLE) -> int:
    """How many of ``channels`` survive ``sparsity``: ``C - floor(sparsity * C)``, at least 1, rounded up
    to a multiple of ``multiple`` (never above ``C``; 1 = no rounding)."""
    kept = max(channels - int(np.floor(sparsity * channels + 1e-9)), 1)
    return min(-(-kept // max(multiple, 1)) * max(multiple, 1), channels)


def select_channels(model, groups: list[ChannelGroup], sparsity: float, method: str,
                    multiple: int = CHANNEL_MULTIPLE) -> None:
    """Mark the least important channels of each group for removal, keeping ``kept_channels``."""
    for group in groups:
        scores = importance(model, group, method)
        n_remove = group.channels - kept_channels(group.channels, sparsity, multiple)
        group.removed = sorted(int(i) for i in np.argsort(scores, kind="stable")[:n_remove])


# -- rebuild ----------------------------------------------------------------------------------------
def rebuild(model, groups: list[ChannelGroup]):
    """A new model with the groups' removed channels gone and all weights copied over."""
    import keras

    # name -> (output-channel keep, input-channel keep) per functional model; a VGG conv can be the
    # consumer of one group and the source of the next.
    slices: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for group in groups:
        if not group.removed:
            continue
        keep = group.keep
        slices.setdefault((group.model_name, group.source), {})["out"] = keep
        for name in group.chain:
            slices.setdefault((group.model_name, name), {})["channel"] = keep
        slices.setdefault((group.model_name, group.consumer), {})["in"] = keep
    new_filters = {key[1]: len(spec["out"]) for key, spec in slices.items() if "out" in spec}

    def clone_layer(layer):
        config = layer.get_config()
        if layer.name in new_filters:
            config["filters"] = new_filters[layer.name]
        return layer.__class__.from_config(config)

    new_model = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    _copy_weights(model, new_model, slices)
    return new_model


def _copy_weights(old, new, slices) -> None:
    def body(model):  # clone_model re-creates Input layers, not always under their old names
        return [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]

    for old_layer, new_layer in zip(body(old), body(new), strict=True):
        if old_layer.name != new_layer.name:
            raise RuntimeError(f"rebuilt graph out of order: {old_layer.name} vs {new_layer.name}")
        if _is_functional(old_layer):
            _copy_weights(old_layer, new_layer, slices)
            continue
        if not old_layer.weights:
            continue
        spec = slices.get((old.name, old_layer.name), {})
        values = [_slice(type(old_layer).__name__, w.name, w.numpy(), spec)
                  for w in old_layer.weights]
        new_layer.set_weights(values)
        new_layer.trainable = old_layer.trainable


def _slice(layer_type: str, weight: str, value: np.ndarray, spec: dict[str, np.ndarray]) -> np.ndarray:
    if not spec:
        return value
    if layer_type == "Conv2D":
        if weight == "kernel":
            if "in" in spec:
                value = value[:, :, spec["in"], :]
            if "out" in spec:
                value = value[..., spec["out"]]
            return value
        return value[spec["out"]] if "out" in spec else value  # bias
    if layer_type == "DepthwiseConv2D":
        return value[:, :, spec["channel"], :] if weight == "kernel" else value[spec["channel"]]
    if layer_type == "BatchNormalization":
        return value[spec["channel"]]
    raise RuntimeError(f"cannot slice weights of a {layer_type} layer")


def structured_record(groups: list[ChannelGroup]) -> dict[str, Any]:
    return {g.source: {"channels": g.channels, "removed": len(g.removed), "kept": g.channels - len(g.removed),
                       "consumer": g.consumer, "path": g.chain} for g in groups}


# -- reconstruction ---------------------------------------------------------------------------------
# Ridge strength (x the mean diagonal of the Gram matrix), pulling the refit towards the original
# (sliced) kernel rather than towards zero. The remaining expanded channels are strongly correlated, so
# a weak pull (1e-4, towards zero) let the solve trade huge opposite weights: on efficientnet_lite0 at 50%
# the projections' largest folded weight grew 3-11x and its ratio to the channel's RMS from 3.7 to 6-7,
# which costs per-channel INT8 about a bit (ONNX INT8 agreement 0.980, OpenVINO 0.939 after 1 epoch).
RIDGE = 0.1


def reconstruct_consumers(original, pruned, groups: list[ChannelGroup], batches, positions: int = 64,
                          seed: int = 0, ridge: float = RIDGE) -> list[str]:
    """Refit each 1x1 consumer conv (the projection) so that, fed the pruned network's remaining
    channels, it reproduces the ORIGINAL network's projection output (least squares over sampled
    pixels, as in ThiNet / He et al. 2017 channel pruning). Done block by block in graph order, each
    fit seeing the already-corrected earlier blocks, so errors do not pile up. Returns the refitted
    layer names. ``batches``: model inputs (numpy), e.g. training images without augmentation.
    ``ridge``: see ``RIDGE``.
    """
    import keras

    rng = np.random.default_rng(seed)
    refitted = []
    for group in groups:
        if not group.removed:
            continue
        sub_o, sub_p = _find_model(original, group.model_name), _find_model(pruned, group.model_name)
        consumer_o, consumer_p = sub_o.get_layer(group.consumer), sub_p.get_layer(group.consumer)
        if tuple(consumer_o.kernel_size) != (1, 1) or tuple(consumer_o.strides) != (1, 1):
            continue  # only pointwise projections are a plain linear map per pixel
        extract_p = keras.Model(sub_p.inputs, consumer_p.input)
        extract_o = keras.Model(sub_o.inputs, consumer_o.output)
        gram = cross = None
        for x in batches:
            inputs, target = np.asarray(extract_p(x)), np.asarray(extract_o(x))
            n, h, w, c = inputs.shape
            pick = rng.choice(h * w, min(positions, h * w), replace=False)
            xs = inputs.reshape(n, h * w, c)[:, pick].reshape(-1, c).astype(np.float64)
            ys = target.reshape(n, h * w, -1)[:, pick].reshape(-1, target.shape[-1]).astype(np.float64)
            if consumer_p.use_bias:
                xs = np.concatenate([xs, np.ones((len(xs), 1))], axis=1)
            gram = xs.T @ xs if gram is None else gram + xs.T @ xs
            cross = xs.T @ ys if cross is None else cross + xs.T @ ys
        start = consumer_p.kernel.numpy()[0, 0].astype(np.float64)  # the original kernel, sliced
        if consumer_p.use_bias:
            start = np.concatenate([start, consumer_p.bias.numpy()[None].astype(np.float64)])
        strength = ridge * np.trace(gram) / len(gram) + 1e-8
        solution = np.linalg.solve(gram + strength * np.eye(len(gram)), cross + strength * start).astype(np.float32)
        kernel = solution[:c][None, None]
        consumer_p.kernel.assign(kernel)
        if consumer_p.use_bias:
            consumer_p.bias.assign(solution[c])
        refitted.append(group.consumer)
    return refitted
