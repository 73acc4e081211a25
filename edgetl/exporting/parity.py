"""Parity of an exported artifact with the Keras FP32 model it came from.

Both run on the same held-back images; the artifact through ``edgetl.runtime.backends.open_backend``
(the code path the runtime and bench use). Numbers compare the graph outputs (logits where the model has
them), top-1 on argmax.

Pass rules (``threshold`` in the sidecar says which applied):

* fp32: ``max_abs_diff <= 1e-4 * max(1, max|reference|)`` (plain 1e-4 for logits of magnitude <= 1;
  large 1000-class logits get the same relative room) and top-1 agreement 1.0 up to exact ties.
* fp16: ``max_abs_diff <= 1e-2 * max(1, max|reference|)`` and agreement >= ``min_agreement``.
* dynamic / int8: top-1 agreement >= ``min_agreement`` (default 0.98).

Ties and zero vectors (``agreement_rows``; bench's comparison with its Keras reference uses the same
function, so both report the same numbers):

* top-1: an image agrees when the class the artifact picks is one of the reference's maxima up to
  a tie tolerance, ``reference[pick] >= max(reference) - tol`` with
  ``tol = max(TIE_RTOL * range, TIE_ATOL)``, ``range`` the spread (max - min) of all reference
  outputs on the check set. A reference whose classes lie closer than that made no decision, so
  either pick agrees; a model whose logits are all ~1e-10 is all ties. A NaN/inf output never
  agrees.
* cosine: two vectors both of norm <= ZERO_NORM are the same (near-)zero vector: cosine 1. One
  near-zero vector against a real one scores ~0, as the formula gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2
BATCH = 32
# Tie rule: 1e-4 of the reference's output range (1e-3 for logits spanning -5..5); never finer than
# 1e-6, below which two float32 logits near 1 are a rounding step apart and softmax cannot tell them.
TIE_RTOL = 1e-4
TIE_ATOL = 1e-6
ZERO_NORM = 1e-6


@dataclass
class CheckSet:
    """Images parity runs on: raw uint8 pixels, optional labels, and where they came from."""

    pixels: np.ndarray
    labels: np.ndarray | None
    compared_on: str
    paths: list[Path]

    def __len__(self) -> int:
        return len(self.pixels)


def run_batches(fn, inputs: np.ndarray, batch: int = BATCH) -> np.ndarray:
    return np.concatenate([np.asarray(fn(inputs[i:i + batch]), np.float32)
                           for i in range(0, len(inputs), batch)])


def keras_outputs(model, inputs: np.ndarray) -> np.ndarray:
    return run_batches(lambda x: model(x, training=False), inputs)


def artifact_outputs(path: Path, inputs: np.ndarray, threads: int | None = None,
                     **backend_options) -> tuple[np.ndarray, dict]:
    from ..runtime.backends import open_backend

    backend = open_backend(path, "cpu", threads, **backend_options)
    inputs = inputs.astype(backend.input_dtype, copy=False) if backend.input_dtype == np.uint8 else inputs
    if backend.dynamic_batch or not backend.input_shape[0]:
        outputs = run_batches(backend.run, inputs)
    else:  # --static-batch N: chunks of exactly N, the last one padded
        outputs = run_batches(lambda x: backend.run(_padded(x, backend.input_shape[0]))[:len(x)], inputs,
                              backend.input_shape[0])
    precision = getattr(backend, "precision", None) or "native"
    return outputs, {"runtime": backend.runtime, "runtime_version": backend.version(), "precision": precision,
                     "settings": dict(backend.settings)}


def tie_tolerance(reference: np.ndarray) -> float:
    """How close two reference outputs must be to count as tied (see the module docstring)."""
    finite = reference[np.isfinite(reference)]
    spread = float(finite.max() - finite.min()) if finite.size else 0.0
    return max(TIE_RTOL * spread, TIE_ATOL)


def agreement_rows(reference: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: (top-1 agrees under the tie rule, cosine under the zero-vector rule); NaN rows
    disagree and have a NaN cosine."""
    ref, out = reference.astype(np.float64), outputs.astype(np.float64)
    finite = np.isfinite(ref).all(-1) & np.isfinite(out).all(-1)
    ref_safe = np.where(np.isfinite(ref), ref, -np.inf)
    pick = np.where(np.isfinite(out), out, -np.inf).argmax(-1)
    chosen = np.take_along_axis(ref_safe, pick[:, None], -1)[:, 0]
    agree = finite & (chosen >= ref_safe.max(-1) - tie_tolerance(ref))
    ref_norm, out_norm = np.linalg.norm(ref, axis=-1), np.linalg.norm(out, axis=-1)
    with np.errstate(invalid="ignore"):
        cosine = np.sum(ref * out, axis=-1) / np.maximum(ref_norm * out_norm, 1e-300)
    cosine = np.where((ref_norm <= ZERO_NORM) & (out_norm <= ZERO_NORM), 1.0, cosine)
    return agree, cosine

def _padded(batch: np.ndarray, size: int) -> np.ndarray:
    if len(batch) == size:
        return batch
    return np.concatenate([batch, np.repeat(batch[-1:], size - len(batch), axis=0)])


def compare(reference: np.ndarray, outputs: np.ndarray, mode: str, min_agreement: float,
            labels: np.ndarray | None = None) -> dict[str, Any]:
    diff = np.abs(outputs.astype(np.float64) - reference.astype(np.float64))
    ref_top, out_top = reference.argmax(-1), outputs.argmax(-1)
    agree, cosines = agreement_rows(reference, outputs)
    agreement = float(agree.mean())
    cosine = float(np.mean(cosines))
    scale = max(1.0, float(np.abs(reference).max()))
    result = {"top1_agreement": round(agreement, 6), "max_abs_diff": float(diff.max()),
              "mean_abs_diff": float(diff.mean()), "cosine": round(cosine, 8), "n_images": int(len(reference))}
    if mode == "fp32":
        limit = FP32_TOLERANCE * scale
        # Exact ties aside, the same float graph must pick the same class.
        passed = result["max_abs_diff"] <= limit
        result["threshold"] = {"max_abs_diff": limit}
    elif mode == "fp16":
        limit = FP16_TOLERANCE * scale
        passed = result["max_abs_diff"] <= limit and agreement >= min_agreement
        result["threshold"] = {"max_abs_diff": limit, "top1_agreement": min_agreement}
    else:
        passed = agreement >= min_agreement
        result["threshold"] = {"top1_agreement": min_agreement}
    if labels is not None:
        result["accuracy"] = round(float((out_top == labels).mean()), 6)
        result["reference_accuracy"] = round(float((ref_top == labels).mean()), 6)
    result["passed"] = bool(passed)
    return result


def describe(parity: dict[str, Any]) -> str:
    # Agreement with its count: 48/49 prints as 0.980 at three decimals but misses a 0.98 threshold.
    agreeing = round(parity["top1_agreement"] * parity["n_images"])
    return (f"agreement {parity['top1_agreement']:.3f} ({agreeing}/{parity['n_images']}), "
            f"max|diff| {parity['max_abs_diff']:.2e}, "
            f"cosine {parity['cosine']:.5f} on {parity['n_images']} images")
