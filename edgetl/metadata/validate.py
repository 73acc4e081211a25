"""Every field of an artifact's description checked once, here: the sidecar (``<artifact>.json``), the
description export embeds inside the artifact, and the blocks a model card shares with them (labels,
the preprocessing recipe).

Readers (the runtime, predict, bench, the next export) then use the values as they are: a sidecar
edited by hand, or written by another tool, fails here with one ``UsageError`` line naming the file
and the field (``preprocessing.std``, ``labels[3]``, ...) instead of a traceback deep in numpy or
silently wrong scores (``std: [0, 0, 0]`` divides by zero). Types, lengths and ranges only; whether the
files match their hashes is ``verify_artifact``'s job, and whether the graph matches the sidecar is
the runtime's (``EdgeModel``).
"""

from __future__ import annotations

import math
import re
import unicodedata
from pathlib import Path
from typing import Any

from ..errors import UsageError

FORMATS = ("onnx", "tflite", "openvino")
LAYOUTS = ("NHWC", "NCHW")
CHANNEL_ORDERS = ("RGB", "BGR")
OUTPUT_KINDS = ("logits", "probabilities")
INPUT_DTYPES = ("float32", "float16", "uint8", "int8", "int16", "uint16")
QUANTIZATION_MODES = ("none", "fp16", "dynamic", "int8")
# Characters that break a labels file one label a line (TFLite labels.txt, OpenVINO/Model API lists)
# or a terminal: control characters, line and paragraph separators, lone surrogates.
_FORBIDDEN_IN_LABELS = ("Cc", "Zl", "Zp", "Cs")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_OBJECT_FIELDS = ("quantization", "source_model", "versions", "parity", "target")


def _fail(where: str | Path, name: str, problem: str) -> UsageError:
    return UsageError(f"{where}: field '{name}' {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def check_labels(labels: Any, where: str | Path, name: str = "labels") -> None:
    """A non-empty list of distinct, non-empty strings without control characters or line breaks."""
    if not isinstance(labels, (list, tuple)) or not labels:
        raise _fail(where, name, "is invalid (a non-empty list of class names)")
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip():
            raise _fail(where, f"{name}[{i}]", f"must be a non-empty string, got {label!r}")
        if any(unicodedata.category(c) in _FORBIDDEN_IN_LABELS for c in label):
            raise _fail(where, f"{name}[{i}]", f"holds a control character or line break: {label!r}")
    labels = list(labels)
    if len(set(labels)) != len(labels):
        twice = next(label for label in labels if labels.count(label) > 1)
        raise _fail(where, name, f"names {twice!r} twice")


def _numbers(value: Any, where, name: str, positive: bool) -> None:
    if not isinstance(value, (list, tuple)) or len(value) not in (1, 3) or not all(_is_number(v) for v in value):
        raise _fail(where, name, f"must be a list of 1 or 3 finite numbers, got {value!r}")
    if positive and not all(v > 0 for v in value):
        raise _fail(where, name, f"must be > 0 (it divides the pixels), got {value!r}")


def _choice(data: dict, key: str, choices: tuple[str, ...], where, prefix: str) -> None:
    if key in data and data[key] not in choices:
        raise _fail(where, prefix + key, f"is {data[key]!r}; expected one of {', '.join(choices)}")


def check_recipe(recipe: Any, where: str | Path, name: str = "preprocessing") -> None:
    """A ``Preprocessing`` dict: every field present is of the right type and range (absent ones take
    the recipe's defaults, as for sidecars written before they were recorded)."""
    from ..preprocess import INTERPOLATIONS, DecodeRules

    if not isinstance(recipe, dict):
        raise _fail(where, name, f"must be an object (the preprocessing recipe), got {type(recipe).__name__}")
    prefix = name + "."
    size = recipe.get("input_size")
    if "input_size" in recipe and not (isinstance(size, (list, tuple)) and len(size) == 2
                                       and all(_is_int(v) and 0 < v <= 16384 for v in size)):
        raise _fail(where, prefix + "input_size", f"must be [height, width], positive integers, got {size!r}")
    shorter = recipe.get("resize_shorter")
    if shorter is not None and not (_is_int(shorter) and 0 < shorter <= 65536):
        raise _fail(where, prefix + "resize_shorter", f"must be a positive integer or null, got {shorter!r}")
    _choice(recipe, "interpolation", INTERPOLATIONS, where, prefix)
    for key, positive in (("mean", False), ("std", True)):
        if key in recipe:
            _numbers(recipe[key], where, prefix + key, positive)
    _choice(recipe, "channel_order", CHANNEL_ORDERS, where, prefix)
    _choice(recipe, "layout", LAYOUTS, where, prefix)
    try:
        DecodeRules.from_dict(recipe.get("decode"))
    except (UsageError, TypeError, ValueError) as exc:
        raise _fail(where, prefix + "decode", f"is invalid ({exc})") from None


def _check_input(spec: Any, where) -> None:
    if not isinstance(spec, dict):
        raise _fail(where, "input", f"must be an object, got {type(spec).__name__}")
    for key in ("name", "tensor_name"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise _fail(where, f"input.{key}", f"must be a string, got {spec[key]!r}")
    shape = spec.get("shape")
    if shape is not None and not (isinstance(shape, (list, tuple)) and len(shape) == 4
                                  and all(d is None or (_is_int(d) and d > 0) for d in shape)):
        raise _fail(where, "input.shape", f"must be 4 positive integers (or null for a dynamic one), got {shape!r}")
    _choice(spec, "layout", LAYOUTS, where, "input.")
    _choice(spec, "dtype", INPUT_DTYPES, where, "input.")
    quant = spec.get("quantization")
    if quant is None:
        return
    if not isinstance(quant, dict):
        raise _fail(where, "input.quantization", f"must be an object {{scale, zero_point}} or null, got {quant!r}")
    scale, zero = quant.get("scale"), quant.get("zero_point")
    if not (_is_number(scale) and scale > 0):
        raise _fail(where, "input.quantization.scale", f"must be a finite number > 0, got {scale!r}")
    if not (_is_int(zero) and -65536 <= zero <= 65535):
        raise _fail(where, "input.quantization.zero_point", f"must be an integer, got {zero!r}")


def _check_output(spec: Any, where) -> None:
    if not isinstance(spec, dict):
        raise _fail(where, "output", f"must be an object, got {type(spec).__name__}")
    for key in ("name", "tensor_name", "dtype"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise _fail(where, f"output.{key}", f"must be a string, got {spec[key]!r}")
    _choice(spec, "kind", OUTPUT_KINDS, where, "output.")


def _check_files(data: dict, where) -> None:
    for key in ("file", "sha256"):
        if data.get(key) is not None and (not isinstance(data[key], str) or not data[key]):
            raise _fail(where, key, f"must be a non-empty string, got {data[key]!r}")
    if data.get("sha256") is not None and not _SHA256.match(data["sha256"]):
        raise _fail(where, "sha256", "must be 64 lowercase hex digits")
    files = data.get("files")
    if isinstance(files, dict):
        for name, digest in files.items():
            if not name or not isinstance(digest, str) or not _SHA256.match(digest):
                raise _fail(where, f"files[{name!r}]", "must map a file name to its sha256 (64 hex digits)")
    elif isinstance(files, list):
        if not all(isinstance(name, str) and name for name in files):
            raise _fail(where, "files", "must list file names")
    elif files is not None:
        raise _fail(where, "files", f"must be an object of {{name: sha256}}, got {type(files).__name__}")
    size = data.get("size_bytes")
    if size is not None and not (_is_int(size) and size >= 0):
        raise _fail(where, "size_bytes", f"must be a non-negative integer, got {size!r}")


def check_description(data: dict[str, Any], where: str | Path) -> None:
    """Every field of a sidecar or an embedded description (the schema is the caller's check)."""
    if data.get("format") is not None and data["format"] not in FORMATS:
        raise _fail(where, "format", f"is {data['format']!r}; expected one of {', '.join(FORMATS)}")
    _check_files(data, where)
    if "labels" in data:
        check_labels(data["labels"], where)
    if data.get("input") is not None:
        _check_input(data["input"], where)
    if data.get("output") is not None:
        _check_output(data["output"], where)
    if data.get("preprocessing") is not None:
        check_recipe(data["preprocessing"], where)
    for key in _OBJECT_FIELDS:
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise _fail(where, key, f"must be an object, got {type(data[key]).__name__}")
    mode = (data.get("quantization") or {}).get("mode")
    if mode is not None and mode not in QUANTIZATION_MODES:
        raise _fail(where, "quantization.mode", f"is {mode!r}; expected one of {', '.join(QUANTIZATION_MODES)}")


__all__ = ["check_description", "check_labels", "check_recipe"]
