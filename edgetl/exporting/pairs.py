"""Pair-safe INT8 weights: per-channel scales chosen so that x86 CPUs without VNNI cannot saturate.

Their uint8 x int8 dot product (``vpmaddubsw``, used by ONNX Runtime's U8S8 and OpenVINO's oneDNN
kernels) adds each two neighbouring products along the reduction axis into a saturating int16. With
uint8 activations up to 255, weights with |q1| + |q2| <= 128 can never overflow it (255 * 128 = 32640
<= 32767), so the fast kernels compute exactly, on every input and every CPU. Per output channel the
scale grows only as far as its largest neighbour pair needs: a median of 1.3x on efficientnet_lite0,
about 0.4 bit, where 7-bit weights (ORT ``reduce_range``, NNCF ``OverflowFix.ENABLE``) give up a full bit.

Which neighbours share a sum depends on how a kernel packs the weights, so a convolution is bounded in
both orders of its reduction axis (C, kh, kw and kh, kw, C); depthwise convolutions are not GEMMs and
widen to int16 themselves. Backends (``backends.onnx.bound_weight_pairs``, ``backends.openvino.bound_weight_pairs``) find
the weights in their graphs and call ``requantize``.
"""

from __future__ import annotations

import numpy as np

from ..choices import Int8Weights

PAIR_BOUND = 128

# ``--int8-weights``. "auto" is per format and per *target* CPU (``--target-cpu``), never the exporting
# one: an artifact is made for the machine it will run on, and two exports of one model must not differ
# because they ran on different build machines. Each export backend says what "auto" means for it where
# the dot product may saturate (``ExportBackend.auto_int8_weights``: ONNX full, OpenVINO pair-safe, TFLite
# none, since XNNPACK never saturates); where it cannot ("vnni", "arm") auto is full 8-bit weights.
INT8_WEIGHTS = tuple(m.value for m in Int8Weights)
# "any" (the default) is the portable choice: an OpenVINO artifact made for it runs exactly on every CPU;
# "this" means the exporting CPU, read once at export (runtime.cpu) and recorded as what it resolved to.
TARGET_CPUS = ("any", "vnni", "no-vnni", "arm", "this")
SAFE_TARGETS = ("vnni", "arm")  # int8 dot products accumulate without int16 saturation


def target_cpu(target: str) -> str:
    """The target as recorded in the sidecar: "this" becomes what the exporting CPU is."""
    from ..runtime.cpu import int8_cpu_kind

    return int8_cpu_kind() if target == "this" else target


def resolve(int8_weights: str, fmt: str, target: str = "any") -> str | None:
    """The weight choice for one format and target CPU (None where it does not apply)."""
    from .backends import get_backend

    auto = get_backend(fmt).auto_int8_weights
    if auto is None:
        return None
    if int8_weights != Int8Weights.AUTO:
        return int8_weights
    return Int8Weights.FULL.value if target_cpu(target) in SAFE_TARGETS else auto


# How a weight tensor's reduction axis is laid out: "conv" [O, C, kh, kw]; "kn" [K, N] (MatMul B,
# Gemm B); "nk" [N, K] (Gemm with transB, MatMul with transpose_b).
LAYOUTS = ("conv", "kn", "nk")


def weight_layout(convolution: bool, transposed: bool) -> str:
    """The layout of a GEMM's weight input: a convolution's, or a MatMul/Gemm B, transposed or not
    (ONNX ``transB``, OpenVINO ``transpose_b``)."""
    if convolution:
        return "conv"
    return "nk" if transposed else "kn"


def max_pair_sum(weights: np.ndarray, layout: str) -> np.ndarray:
    """Per output channel, the largest |w_k| + |w_k+1| over neighbours on the reduction axis."""
    weights = np.abs(np.asarray(weights, dtype=np.float64))
    if layout == "conv":
        views = [weights.reshape(len(weights), -1), weights.transpose(0, 2, 3, 1).reshape(len(weights), -1)]
    elif layout == "kn":
        views = [weights.T]
    elif layout == "nk":
        views = [weights]
    else:
        raise ValueError(f"unknown weight layout {layout!r}; one of {LAYOUTS}")
    sums = []
    for rows in views:
        rows = np.pad(rows, ((0, 0), (0, rows.shape[1] % 2)))
        sums.append((rows[:, 0::2] + rows[:, 1::2]).max(axis=1))
    return np.max(sums, axis=0)


def channel_axis(layout: str) -> int:
    return 1 if layout == "kn" else 0


def per_channel(values: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """Per-channel quantization parameters (one per index of ``axis``, or one for the whole tensor) as
    float64, shaped to broadcast against an ``ndim`` tensor."""
    values = np.asarray(values, dtype=np.float64)
    shape = [1] * ndim
    if values.size > 1:
        shape[axis] = -1
    return values.reshape(shape)


def dequantize(q: np.ndarray, scale: np.ndarray, axis: int, zero: np.ndarray | None = None) -> np.ndarray:
    """Float64 values of integer weights ``q`` (``per_channel`` scale and zero point)."""
    shifted = q.astype(np.float64) - (0.0 if zero is None else per_channel(zero, q.ndim, axis))
    return shifted * per_channel(scale, q.ndim, axis)


def requantize(weights: np.ndarray, scale: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, scale) for the float ``weights``: ``scale`` where it already keeps every pair within
    the bound, grown where it does not. ``scale`` is per output channel (any shape that broadcasts
    along the layout's channel axis) or one per tensor; the result has the same shape and dtype."""
    scale = np.asarray(scale)
    need = max_pair_sum(weights, layout) / (PAIR_BOUND - 1)  # rounding adds at most 1 to a pair
    if scale.size == 1:
        need = np.asarray(need.max())
    elif scale.size != need.size:
        raise ValueError(f"scale of {scale.size} values for {need.size} output channels")
    new_scale = np.maximum(scale.astype(np.float64), need.reshape(scale.shape))
    shape = [1] * np.ndim(weights)
    shape[channel_axis(layout)] = -1
    divisor = new_scale.reshape(shape) if new_scale.size > 1 else new_scale.reshape(())
    quantized = np.clip(np.round(np.asarray(weights, dtype=np.float64) / divisor), -127, 127)
    assert max_pair_sum(quantized, layout).max() <= PAIR_BOUND
    return quantized.astype(np.int8), new_scale.astype(scale.dtype)


def scale_growth(old: np.ndarray, new: np.ndarray) -> float:
    old = np.asarray(old, dtype=np.float64)
    return float(np.median(np.asarray(new, dtype=np.float64) / np.where(old > 0, old, 1)))


def summary(growth: list[float]) -> dict:
    """The sidecar's ``pair_safe`` block: the bound, layers re-quantized, median scale growth."""
    return {"bound": PAIR_BOUND, "layers": len(growth),
            "median_scale_growth": round(float(np.median(growth)), 3) if growth else 1.0}
