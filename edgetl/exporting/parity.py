"""Parity of an exported artifact with the Keras FP32 model it came from.

Both run on the same held-back images; the artifact through ``edgetl.runtime.backends.open_backend``
(the code path the runtime and bench use). Numbers compare the graph outputs (logits where the model has
them), top-1 on argmax.

Pass rules (``threshold`` in the sidecar says which applied):

* fp32: ``max_abs_diff <= 1e-4 * max(1, max|reference|)`` (plain 1e-4 for logits of magnitude <= 1;
  large 1000-class logits get the same relative room) and top-1 agreement 1.0 up to exact ties.
* fp16: ``max_abs_diff <= 1e-2 * max(1, max|reference|)`` and agreement >= ``min_agreement``.
* dynamic / int8: top-1 agreement >= ``min_agreement`` (default 0.98).

Ties, zero vectors and NaN rows follow ``edgetl.metrics`` (bench's comparison with its Keras
reference is the same function, so both report the same numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2
BATCH = 32


@dataclass
class ParityImages:
    """Images parity runs on: raw uint8 pixels, optional labels, and where they came from."""

    pixels: np.ndarray
    labels: np.ndarray | None
    compared_on: str
    paths: list[Path]

    def __len__(self) -> int:
        return len(self.pixels)


def parity_images(config, source, calib) -> ParityImages:
    """Held-back images: --check DIR, else the model's own val split, else the calibration images."""
    from ..data import load_pixels, scan_unlabelled
    from ..errors import UsageError

    def labels_for(paths: list[Path], root: Path) -> np.ndarray | None:
        index = {name: i for i, name in enumerate(source.labels)}
        found = [index.get(p.relative_to(root).parts[0]) if len(p.relative_to(root).parts) > 1 else None
                 for p in paths]
        return None if any(f is None for f in found) else np.asarray(found)

    if config.check is not None:
        paths, _ = scan_unlabelled(config.check)
        if not paths:
            raise UsageError(f"--check folder {config.check} has no usable image")
        return ParityImages(load_pixels(paths, source.recipe), labels_for(paths, config.check),
                            f"--check {config.check} ({len(paths)} images)", paths)
    dataset = source.metadata.get("dataset") or {}
    root, files = dataset.get("root"), (dataset.get("val") or {}).get("files") or []
    if root and files and all((Path(root) / f).exists() for f in files):
        paths = [Path(root) / f for f in files]
        return ParityImages(load_pixels(paths, source.recipe), labels_for(paths, Path(root)),
                            f"val split of {root} ({len(paths)} images)", paths)
    if calib is not None:
        return ParityImages(calib.pixels, None, f"calibration images ({len(calib)}; no held-back set found)",
                            calib.paths)
    raise UsageError("no images to check parity on: the model's val split is not on this machine; "
                     "pass --check DIR (or --calib DIR)")


def keras_reference(source, images: ParityImages) -> np.ndarray:
    """The Keras FP32 outputs every artifact is compared with (logits where the model has them); for an
    ONNX source, ONNX Runtime FP32 on the given file."""
    from .keras_graph import output_model

    if source.source_kind == "onnx":
        from .sources.onnx_source import reference

        return reference(source, source.recipe.normalize(images.pixels))
    return keras_outputs(output_model(source), source.recipe.normalize(images.pixels))


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


def _padded(batch: np.ndarray, size: int) -> np.ndarray:
    if len(batch) == size:
        return batch
    return np.concatenate([batch, np.repeat(batch[-1:], size - len(batch), axis=0)])


def compare(reference: np.ndarray, outputs: np.ndarray, mode: str, min_agreement: float,
            labels: np.ndarray | None = None) -> dict[str, Any]:
    """``metrics.compare`` plus the pass rule for ``mode`` (the module docstring), as the sidecar records it."""
    measured = metrics.compare(reference, outputs)
    agreement = measured["top1_agreement"]
    scale = max(1.0, float(np.abs(reference[np.isfinite(reference)]).max(initial=0.0)))
    nan = float("nan")  # a non-finite statistic fails every threshold below
    result = {"top1_agreement": round(agreement, 6),
              "max_abs_diff": nan if measured["max_abs_diff"] is None else measured["max_abs_diff"],
              "mean_abs_diff": nan if measured["mean_abs_diff"] is None else measured["mean_abs_diff"],
              "cosine": nan if measured["cosine_mean"] is None else round(measured["cosine_mean"], 8),
              "n_images": measured["n_images"]}
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
    if labels is not None:  # the bench's figures (edgetl.metrics): Wilson interval, flips and exact McNemar
        ref_correct, correct = metrics.correct(reference, labels), metrics.correct(outputs, labels)
        paired = metrics.paired_accuracy(ref_correct, correct)
        result["accuracy"] = round(float(correct.mean()), 6)
        result["reference_accuracy"] = round(float(ref_correct.mean()), 6)
        result["accuracy_interval"] = [round(v, 6) for v in metrics.top1_with_interval(correct)["interval"]]
        result["vs_reference_accuracy"] = {"flips": paired["flips"], "lost": paired["lost"],
                                           "gained": paired["gained"], "mcnemar_p": round(paired["mcnemar_p"], 6),
                                           "change_interval": [round(v, 6) for v in paired["change_interval"]]}
    result["passed"] = bool(passed)
    return result


def describe(parity: dict[str, Any]) -> str:
    # Agreement with its count: 48/49 prints as 0.980 at three decimals but misses a 0.98 threshold.
    agreeing = round(parity["top1_agreement"] * parity["n_images"])
    text = (f"agreement {parity['top1_agreement']:.3f} ({agreeing}/{parity['n_images']}), "
            f"max|diff| {parity['max_abs_diff']:.2e}, "
            f"cosine {parity['cosine']:.5f} on {parity['n_images']} images")
    vs = parity.get("vs_reference_accuracy")
    if vs and vs["flips"]:  # how many photos an accuracy change is, and whether it could be chance
        text += (f"; top-1 {parity['accuracy']:.1%} vs {parity['reference_accuracy']:.1%}: {vs['flips']} flips, "
                 f"McNemar p={vs['mcnemar_p']:.2f}")
    return text
