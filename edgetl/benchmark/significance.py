"""What a bench's differences are worth: latency ratios from the interleaved rounds with their
bootstrap intervals, accuracy with its Wilson interval, McNemar and per-class figures.

Latency (``timing.paired_ratio``; each entry's ``latency_ms[size]``):

* ``vs_fp32``: speed-up against the FP32 artifact of the same format and backbone (> 1: faster);
* ``vs_reference``: speed-up against the Keras FP32 reference timed in the same rounds;
* ``vs_anchor``: latency relative to ``--anchor`` (< 1: faster), what the search ranks trials on.

Accuracy (``metrics``): ``accuracy.interval`` (Wilson 95%), ``accuracy.per_class`` (precision and
recall with their change from the reference), ``vs_reference_accuracy`` and ``vs_fp32_accuracy``
(flips, exact McNemar, 95% interval of the change: the photos behind a difference, and whether it
could be chance).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import metrics
from ..timing import paired_ratio
from .inputs import label_indices


def _times(entry: dict[str, Any], size: str) -> list[float] | None:
    """The per-round medians of one batch size: paired across artifacts round by round."""
    return (entry.get("latency_ms") or {}).get(size, {}).get("round_ms")


def fp32_base(entry: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The FP32 artifact of the same format and backbone (the first one, as the rows pair them)."""
    return next((e for e in results if e["format"] == entry["format"] and e["quantization"] == "none"
                 and e["backbone"] == entry["backbone"]), None)


def latency_comparisons(results: list[dict[str, Any]], reference: dict[str, Any] | None,
                        anchor: str | None) -> None:
    """Adds ``vs_fp32``, ``vs_reference`` and ``vs_anchor`` to every timed batch size of each entry."""
    anchor_entry = next((e for e in results if e["name"] == anchor), None)
    for entry in results:
        base = fp32_base(entry, results)
        for size, timing in entry["latency_ms"].items():
            own = timing.get("round_ms")
            if own is None:
                continue
            base_times = _times(base, size) if base else None
            ref_times = _times(reference, size) if reference else None
            anchor_times = _times(anchor_entry, size) if anchor_entry else None
            timing["vs_fp32"] = paired_ratio(base_times, own) if base_times else None
            timing["vs_reference"] = paired_ratio(ref_times, own) if ref_times else None
            timing["vs_anchor"] = paired_ratio(own, anchor_times) if anchor_times else None


def pairwise_speedup(results: list[dict[str, Any]]) -> Callable[[str, str, int], dict[str, Any] | None]:
    """``ratio(candidate, fastest, batch)``: how many times slower the candidate is than the fastest,
    from their shared rounds, with its interval (None when either was not timed at that batch)."""
    by_name = {e["name"]: e for e in results}

    def ratio(candidate: str, fastest: str, batch_size: int) -> dict[str, Any] | None:
        a, b = (_times(by_name[n], str(batch_size)) if n in by_name else None for n in (candidate, fastest))
        return paired_ratio(a, b) if a and b else None

    return ratio


def accuracy_uncertainty(results: list[dict[str, Any]], outputs: list[np.ndarray], classes: list[str],
                         truth: np.ndarray, reference: dict[str, Any] | None,
                         reference_block: dict[str, Any] | None) -> None:
    """Wilson intervals and per-class figures on every entry (and the reference block), McNemar against
    the reference and against the FP32 artifact of the same format."""
    ref_correct, ref_classes = None, {}
    if reference is not None and reference_block is not None:
        mapped = label_indices(classes, reference["labels"], reference["path"])[truth]
        ref_correct = metrics.correct(reference["outputs"]["probabilities"], mapped)
        block = reference_block["accuracy"]
        block["interval"] = metrics.top1_with_interval(ref_correct)["interval"]
        ref_classes = metrics.per_class(block["confusion"], reference["labels"])
        block["per_class"] = ref_classes
    correct = {}
    for entry, raw in zip(results, outputs):
        mapped = label_indices(classes, entry["labels"], entry["path"])[truth]
        correct[entry["name"]] = metrics.correct(raw, mapped)
        accuracy = entry["accuracy"]
        accuracy["interval"] = metrics.top1_with_interval(correct[entry["name"]])["interval"]
        accuracy["per_class"] = metrics.per_class_change(metrics.per_class(accuracy["confusion"], entry["labels"]),
                                                         ref_classes)
        # Only artifacts compared with the reference (exported from it, or --reference given).
        compared = ref_correct is not None and entry.get("vs_reference") is not None
        entry["vs_reference_accuracy"] = metrics.paired_accuracy(ref_correct, correct[entry["name"]]) if compared else None
    for entry in results:
        base = fp32_base(entry, results)
        entry["vs_fp32_accuracy"] = (metrics.paired_accuracy(correct[base["name"]], correct[entry["name"]])
                                     if base is not None and base is not entry else None)


def accuracy_columns(entry: dict[str, Any]) -> dict[str, Any]:
    """The uncertainty columns of an artifact's rows (bench.csv)."""
    low, high = entry["accuracy"].get("interval") or (None, None)
    vs = entry.get("vs_reference_accuracy") or {}
    change_low, change_high = vs.get("change_interval") or (None, None)
    return {"top1_low": low, "top1_high": high, "top1_change_vs_reference": vs.get("change"),
            "top1_change_low": change_low, "top1_change_high": change_high,
            "flips_vs_reference": vs.get("flips"), "mcnemar_p_vs_reference": vs.get("mcnemar_p")}


def latency_columns(timing: dict[str, Any]) -> dict[str, Any]:
    """The paired-ratio columns of one batch size's row."""
    columns = {}
    for key, column in (("vs_fp32", "speedup_vs_fp32"), ("vs_reference", "speedup_vs_reference"),
                        ("vs_anchor", "latency_vs_anchor")):
        ratio = timing.get(key)
        if ratio:
            columns |= {column: ratio["ratio"], f"{column}_low": ratio["low"], f"{column}_high": ratio["high"]}
    return columns
