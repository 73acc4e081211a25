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

Uncertainty of accuracies (how many photos a difference is, and whether it could be chance):

* ``wilson_interval``: 95% Wilson score interval of a proportion (top-1 on n images);
* ``paired_accuracy``: two classifiers on the same images: the flips (images exactly one of them gets
  right), the exact McNemar test on them (two-sided binomial test of the discordant pairs at 1/2) and
  Newcombe's interval (method 10, Wilson-based) of the difference of the two accuracies;
* ``per_class``: precision / recall per class from a confusion matrix, and their change from a reference.

Hand-written (a few lines each, checked against scipy in the tests) so the numpy-only runtime can
import this module.
"""

from __future__ import annotations

import math
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
Z95 = 1.959963984540054  # two-sided 95% normal quantile
SIGNIFICANCE = 0.05


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


def correct(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per image: the top-1 pick is the label (NaN/inf rows are wrong, as in ``accuracy``)."""
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    return (scores.argmax(axis=1) == labels) & np.isfinite(scores).any(axis=1)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``successes / n``: stays inside [0, 1] and is not empty at 0 or n."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def exact_mcnemar(first_only: int, second_only: int) -> float:
    """Two-sided exact McNemar p-value: under "no difference" each of the ``b + c`` discordant images
    is equally likely to favour either classifier, so ``min(b, c)`` is Binomial(b + c, 1/2)."""
    m = first_only + second_only
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(first_only, second_only) + 1)) / 2.0 ** m
    return min(1.0, 2 * tail)


def paired_difference_interval(both: int, first_only: int, second_only: int, neither: int,
                               z: float = Z95) -> tuple[float, float]:
    """95% interval of accuracy(first) - accuracy(second) on the same images: Newcombe (1998),
    method 10, built from the two Wilson intervals and the correlation of the paired outcomes, with
    his correction of that correlation where ad > bc (without it, no flips at all would give a
    zero-width interval: certainty from a handful of images)."""
    n = both + first_only + second_only + neither
    p1, p2 = (both + first_only) / n, (both + second_only) / n
    l1, u1 = wilson_interval(both + first_only, n, z)
    l2, u2 = wilson_interval(both + second_only, n, z)
    margins = (both + first_only) * (second_only + neither) * (both + second_only) * (first_only + neither)
    excess = both * neither - first_only * second_only
    if excess > 0:
        excess = max(excess - n / 2, 0.0)
    phi = excess / math.sqrt(margins) if margins else 0.0
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    epsilon = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, p1 - p2 - delta), min(1.0, p1 - p2 + epsilon)


def top1_with_interval(is_correct: np.ndarray) -> dict[str, Any]:
    """Top-1 of a per-image correctness vector with its Wilson 95% interval and the counts."""
    hits, n = int(np.sum(is_correct)), int(len(is_correct))
    low, high = wilson_interval(hits, n)
    return {"top1": hits / n if n else 0.0, "correct": hits, "n_images": n, "interval": [low, high]}


def paired_accuracy(reference_correct: np.ndarray, candidate_correct: np.ndarray) -> dict[str, Any]:
    """Candidate vs reference on the same images: flips each way, exact McNemar, and the 95% interval
    of the accuracy change (candidate - reference, in fractions)."""
    ref, cand = np.asarray(reference_correct, bool), np.asarray(candidate_correct, bool)
    both, neither = int(np.sum(ref & cand)), int(np.sum(~ref & ~cand))
    lost, gained = int(np.sum(ref & ~cand)), int(np.sum(~ref & cand))
    low, high = paired_difference_interval(both, gained, lost, neither)  # candidate first: its change
    p_value = exact_mcnemar(lost, gained)
    return {"n_images": int(len(ref)), "flips": lost + gained, "lost": lost, "gained": gained,
            "change": (gained - lost) / len(ref) if len(ref) else 0.0, "change_interval": [low, high],
            "mcnemar_p": p_value, "significant": p_value < SIGNIFICANCE}


def per_class(confusion: Iterable[Iterable[int]], labels: list[str]) -> dict[str, dict[str, Any]]:
    """Precision and recall of each class (rows true, columns predicted); None where undefined (a
    class never predicted has no precision, one absent from the data no recall)."""
    matrix = np.asarray(confusion, np.int64)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    return {label: {"precision": float(matrix[i, i] / predicted[i]) if predicted[i] else None,
                    "recall": float(matrix[i, i] / actual[i]) if actual[i] else None, "support": int(actual[i])}
            for i, label in enumerate(labels)}


def per_class_change(classes: dict[str, dict[str, Any]], reference: dict[str, dict[str, Any]]) -> dict[str, dict]:
    """``per_class`` of a candidate with its change from the reference's, matched by class name."""
    def minus(a, b):
        return None if a is None or b is None else a - b

    return {name: {**values, "precision_change": minus(values["precision"], (reference.get(name) or {}).get("precision")),
                   "recall_change": minus(values["recall"], (reference.get(name) or {}).get("recall"))}
            for name, values in classes.items()}


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
