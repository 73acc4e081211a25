"""How an artifact's outputs compare with its FP32 reference, how accurate they are, and what it weighs.

numpy only: the runtime, export parity and bench all import it, so each number means the same
everywhere it is reported.

Ties and zero vectors (``agreement_rows``):

* top-1: an image agrees when the class the artifact picks is one of the reference's maxima up to
  a tie tolerance, ``reference[pick] >= max(reference) - tol`` with
  ``tol = max(TIE_RTOL * range, TIE_ATOL)``, ``range`` the spread (max - min) of all reference
  outputs on the set compared. A reference whose classes lie closer than that made no decision, so
  either pick agrees; a model whose logits are all ~1e-10 is all ties. A NaN/inf output never agrees.
* cosine: two vectors both of norm <= ZERO_NORM are the same (near-)zero vector: cosine 1. One
  near-zero vector against a real one scores ~0, as the formula gives.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np

# Tie rule: 1e-4 of the reference's output range (1e-3 for logits spanning -5..5); never finer than
# 1e-6, below which two float32 logits near 1 are a rounding step apart and softmax cannot tell them.
TIE_RTOL = 1e-4
TIE_ATOL = 1e-6
ZERO_NORM = 1e-6
GZIP_LEVEL = 6  # `gzip -6`, the command-line default: what a person checking a size would get


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, shifted by the row max so large logits do not overflow."""
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


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


def finite_or_none(value) -> float | None:
    """JSON has no NaN: a statistic that is not finite is reported as null."""
    value = float(value)
    return value if np.isfinite(value) else None


def compare(reference: np.ndarray, outputs: np.ndarray) -> dict[str, Any]:
    """Same-space comparison (logits with logits, probabilities with probabilities). Export parity
    adds its pass rule on top; bench reports it as it is."""
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(outputs.astype(np.float64) - reference.astype(np.float64))
    agree, cosine = agreement_rows(reference, outputs)
    return {"top1_agreement": float(np.mean(agree)), "cosine_mean": finite_or_none(cosine.mean()),
            "cosine_min": finite_or_none(cosine.min()), "max_abs_diff": finite_or_none(diff.max()),
            "mean_abs_diff": finite_or_none(diff.mean()), "n_images": int(len(reference))}


def accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 5) -> dict[str, Any]:
    """Top-1/top-k (k clipped to the class count) and the confusion matrix (rows true, columns predicted)."""
    n_classes = scores.shape[1]
    k = min(k, n_classes)
    scores = np.where(np.isfinite(scores), scores, -np.inf)  # NaN rows: never counted as correct
    finite = np.isfinite(scores).any(axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    top1 = order[:, 0]
    confusion = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(confusion, (labels[finite], top1[finite]), 1)
    return {"top1": float(np.mean((top1 == labels) & finite)),
            "top5": float(np.mean((order[:, :k] == labels[:, None]).any(axis=1) & finite)),
            "top5_k": k, "confusion": confusion.tolist(), "predictions": top1}


def file_sizes(files: Path | str | Iterable[Path | str]) -> dict[str, int]:
    """Bytes on disk and gzip bytes of one file or of an artifact's files together (one gzip stream,
    as a tarball would be shipped)."""
    files = [Path(files)] if isinstance(files, (str, Path)) else [Path(f) for f in files]
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    compressed = 0
    for path in files:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                compressed += len(compressor.compress(block))
    compressed += len(compressor.flush())
    return {"bytes": sum(p.stat().st_size for p in files), "gzip_bytes": compressed}
