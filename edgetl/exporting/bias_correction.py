"""Bias correction: remove the mean output shift that INT8 weights cause (Nagel et al. 2019, "Data-Free
Quantization", section 4.2; empirical form, from calibration images).

Rounding (and pair-safe bounding, ``exporting.pairs``) changes each weight by ``dW``; on inputs with per
channel mean ``E[x]`` a layer's output then moves by ``dW @ E[x]`` on average, a bias no later layer
removes. Subtracting it from the layer's bias restores the FP32 output mean. ``E[x]`` is taken from the
FP32 graph on the calibration images, so the correction is deterministic and one forward pass. Each
format finds its own layers and biases (``backends/onnx_bias.py``, ``tflite_bias.py``, ``openvino_bias.py``);
the arithmetic is here.
"""

from __future__ import annotations

import numpy as np


def output_shift(delta: np.ndarray, input_mean: np.ndarray, layout: str, groups: int = 1) -> np.ndarray:
    """Per output channel, the mean output change ``dW @ E[x]`` of one layer.

    ``delta``: quantized minus float weights in the layer's layout (``exporting.pairs.LAYOUTS``: "conv"
    [O, C/groups, kh, kw], "kn" [K, N], "nk" [N, K]); ``input_mean``: the layer input's mean per channel.
    Spatial positions are treated alike (border padding is ignored: it is a few percent of the pixels)."""
    delta = np.asarray(delta, dtype=np.float64)
    mean = np.asarray(input_mean, dtype=np.float64).reshape(-1)
    if layout == "kn":
        return mean @ delta
    if layout == "nk":
        return delta @ mean
    if layout != "conv":
        raise ValueError(f"unknown weight layout {layout!r}")
    out_channels, per_group = delta.shape[:2]
    if per_group * groups != mean.size or out_channels % groups:
        raise ValueError(f"{groups} group(s) of {per_group} input channel(s) for {mean.size} input channels")
    taps = delta.reshape(out_channels, per_group, -1).sum(axis=2)  # [O, C/groups]
    group_of_output = np.arange(out_channels) // (out_channels // groups)
    means = mean.reshape(groups, per_group)[group_of_output]  # each output's own input channels
    return np.sum(taps * means, axis=1)


def quantize_bias(bias: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """A corrected float bias back on its int32 grid (same scale, saturating)."""
    return np.clip(np.round(bias / np.asarray(scale, np.float64)), -2**31, 2**31 - 1).astype("<i4")


def channel_mean(tensor: np.ndarray, channel_axis: int) -> np.ndarray:
    """Mean over every axis but the channel one (batch, spatial)."""
    tensor = np.asarray(tensor, dtype=np.float64)
    axes = tuple(a for a in range(tensor.ndim) if a != channel_axis % tensor.ndim)
    return tensor.mean(axis=axes)


class RunningMean:
    """Per-channel means of several tensors accumulated over calibration batches."""

    def __init__(self):
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, tensor: np.ndarray, channel_axis: int) -> None:
        count = int(np.prod(tensor.shape)) // tensor.shape[channel_axis]
        total = channel_mean(tensor, channel_axis) * count
        self.sums[name] = self.sums.get(name, 0.0) + total
        self.counts[name] = self.counts.get(name, 0) + count

    def mean(self, name: str) -> np.ndarray:
        return self.sums[name] / self.counts[name]


def summary(shifts: list[np.ndarray], biases: list[np.ndarray]) -> dict:
    """The sidecar's ``bias_correction`` block: layers corrected, the typical shift removed relative to
    the bias it was removed from."""
    relative = [float(np.abs(s).mean() / max(np.abs(b).mean(), 1e-12)) for s, b in zip(shifts, biases)]
    return {"method": "dW @ E[x] from the FP32 graph on the calibration images", "layers": len(shifts),
            "median_relative_shift": round(float(np.median(relative)), 5) if relative else 0.0}
