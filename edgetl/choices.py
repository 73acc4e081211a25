"""Every string choice edgetl accepts, as a ``StrEnum``: members compare equal to their strings, so
configs, sidecars and the CLI keep plain strings while the code names each choice once."""

from __future__ import annotations

import enum
from typing import TypeVar

from .errors import UsageError

if hasattr(enum, "StrEnum"):  # Python 3.11+
    StrEnum = enum.StrEnum
else:  # pragma: no cover - Python 3.10
    class StrEnum(str, enum.Enum):
        def __str__(self) -> str:
            return self.value


class Format(StrEnum):
    ONNX = "onnx"
    TFLITE = "tflite"
    OPENVINO = "openvino"


class Mode(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    DYNAMIC = "dynamic"
    INT8 = "int8"


class InputDtype(StrEnum):
    FLOAT32 = "float32"
    UINT8 = "uint8"


class Int8Weights(StrEnum):
    AUTO = "auto"
    FULL = "full"
    PAIR_SAFE = "pair-safe"
    SEVEN_BIT = "7-bit"


class CalibrationMethod(StrEnum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


class Strategy(StrEnum):
    FEATURES = "features"
    FREEZE = "freeze"
    FULL = "full"
    STACK = "stack"
    DISTILL = "distill"


class PruneMethod(StrEnum):
    MAGNITUDE = "magnitude"
    STRUCTURED = "structured"


class TargetKind(StrEnum):
    CPU = "cpu"
    GPU = "gpu"
    NPU = "npu"


E = TypeVar("E", bound=StrEnum)


def choose(kind: type[E], value: str, what: str) -> E:
    """``kind(value)``, or one UsageError line listing the choices (``what`` names the option)."""
    try:
        return kind(value)
    except ValueError:
        raise UsageError(f"unknown {what} {value!r}; choose one of {', '.join(m.value for m in kind)}") from None


def values(kind: type[StrEnum]) -> tuple[str, ...]:
    return tuple(m.value for m in kind)
