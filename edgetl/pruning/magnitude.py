"""Unstructured magnitude pruning of convolution and dense kernels, on plain Keras 3 layers.

Why not TF Model Optimization Toolkit: tfmot 0.8.1 only wraps ``tf_keras`` (Keras 2) models; it
refuses Keras 3 layers, and models saved by ``tf_keras`` do not load back as the Keras 3 models the
rest of edgetl (finetune, export) works with. So the masks live here instead: a Keras callback
multiplies each pruned kernel by its 0/1 mask after every optimizer step (so zeros stay zeros whatever
Adam's momentum says) and recomputes the masks from the current magnitudes at the schedule's points.
Nothing wraps the layers, so the pruned model is an ordinary Keras model that saves and exports like
any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

SCHEDULES = ("constant", "polynomial")
# Kernels smaller than this are left dense by default: the stem conv and early depthwise filters carry
# few weights but a lot of the accuracy (the same rule as TF-MOT's guidance to skip the first layer).
MIN_PARAMS = 1000
PRUNABLE_TYPES = ("Conv2D", "DepthwiseConv2D", "Dense", "SeparableConv2D")


def iter_layers(model) -> Iterator[Any]:
    """Every leaf layer, nested models included (depth first, in graph order)."""
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from iter_layers(layer)
        else:
            yield layer


def kernel_of(layer):
    """The variable holding the layer's kernel (depthwise kernel for DepthwiseConv2D)."""
    for attr in ("kernel", "depthwise_kernel"):
        var = getattr(layer, attr, None)
        if var is not None:
            return var
    return None


def prunable_layers(model, min_params: int = MIN_PARAMS, skip: tuple[str, ...] = ()) -> list:
    """Conv/depthwise/dense layers with at least ``min_params`` kernel weights, minus ``skip`` names."""
    chosen = []
    for layer in iter_layers(model):
        if type(layer).__name__ not in PRUNABLE_TYPES or layer.name in skip:
            continue
        kernel = kernel_of(layer)
        if kernel is not None and int(np.prod(kernel.shape)) >= min_params:
            chosen.append(layer)
    return chosen


def magnitude_mask(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """0/1 mask zeroing exactly ``round(sparsity * n)`` weights of smallest magnitude."""
    flat = np.abs(weights).ravel()
    n_zero = int(round(sparsity * flat.size))
    mask = np.ones(flat.size, weights.dtype)
    if n_zero > 0:
        # argsort, not a threshold: ties (e.g. weights already zero) must not overshoot the count.
        mask[np.argsort(flat, kind="stable")[:n_zero]] = 0
    return mask.reshape(weights.shape)


@dataclass(frozen=True)
class Schedule:
    """Sparsity as a function of the optimizer step.

    ``polynomial`` is TF-MOT's PolynomialDecay with power 3: 0 at ``begin_step``, ``target`` at
    ``end_step``, masks recomputed every ``frequency`` steps in between; ``constant`` is ``target`` from
    step 0 (masks computed once, before training).
    """

    kind: str
    target: float
    begin_step: int = 0
    end_step: int = 0
    frequency: int = 1
    power: float = 3.0

    def sparsity(self, step: int) -> float:
        if self.kind == "constant" or step >= self.end_step:
            return self.target
        if step <= self.begin_step:
            return 0.0
        progress = (step - self.begin_step) / max(1, self.end_step - self.begin_step)
        return self.target * (1.0 - (1.0 - progress) ** self.power)

    def is_update_step(self, step: int) -> bool:
        if self.kind == "constant":
            return step == 0
        if step > self.end_step:
            return False
        return step == self.end_step or (step >= self.begin_step and (step - self.begin_step) % self.frequency == 0)

    @classmethod
    def for_training(cls, kind: str, target: float, total_steps: int) -> "Schedule":
        # Ramp over the first 3/4 of recovery so the last quarter trains at the final sparsity.
        end = max(1, int(total_steps * 0.75))
        return cls(kind, target, begin_step=0, end_step=end, frequency=max(1, end // 10))


class MaskState:
    """The masks of the pruned layers and the operations on them (no Keras callback logic here)."""

    def __init__(self, layers: list):
        self.layers = layers
        self.masks: dict[str, np.ndarray] = {}
        self.current_sparsity = 0.0

    def update(self, sparsity: float) -> None:
        """Recompute every mask from the current magnitudes, then apply."""
        for layer in self.layers:
            self.masks[layer.name] = magnitude_mask(kernel_of(layer).numpy(), sparsity)
        self.current_sparsity = sparsity
        self.apply()

    def apply(self) -> None:
        for layer in self.layers:
            mask = self.masks.get(layer.name)
            if mask is not None:
                var = kernel_of(layer)
                var.assign(var.numpy() * mask)


def pruning_callback(state: MaskState, schedule: Schedule):
    """Keras callback: masks recomputed at schedule points and re-applied after every batch."""
    import keras

    class ApplyMasks(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.step = 0

        def on_train_begin(self, logs=None):
            state.update(schedule.sparsity(0))

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if schedule.is_update_step(self.step):
                state.update(schedule.sparsity(self.step))
            else:
                state.apply()

        def on_train_end(self, logs=None):
            # Whatever the step count, the saved model carries exactly the target sparsity.
            if state.current_sparsity != schedule.target:
                state.update(schedule.target)
            else:
                state.apply()

    return ApplyMasks()


def layer_sparsity(layer) -> dict[str, Any]:
    kernel = kernel_of(layer).numpy()
    zeros = int(np.count_nonzero(kernel == 0))
    return {"params": int(kernel.size), "zeros": zeros, "sparsity": round(zeros / kernel.size, 6),
            "type": type(layer).__name__}


def sparsity_report(layers: list) -> dict[str, dict[str, Any]]:
    return {layer.name: layer_sparsity(layer) for layer in layers}
