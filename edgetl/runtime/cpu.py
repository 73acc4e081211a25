"""This CPU as edgetl reads it: model name, ISA flags, and what its integer kernels can do.

The one reader of ``/proc/cpuinfo`` (bench records the flags with every measurement; the runtime and
export decide on exact INT8 kernels from them). Stdlib only: device apps import it through the runtime."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
INT8_FLAGS = {  # /proc/cpuinfo flag -> the name bench reports, for what it means to INT8 speed
    "avx2": "avx2", "avx512f": "avx512f", "avx512_vnni": "avx512_vnni", "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16", "amx_tile": "amx_tile", "amx_int8": "amx_int8", "amx_bf16": "amx_bf16",
    "asimddp": "arm_dotprod", "i8mm": "arm_i8mm", "sve": "arm_sve",
}


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str | None:
    """/proc/cpuinfo, read once per process (None where there is none: not Linux, or hidden)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def cpu_model_and_flags() -> tuple[str, frozenset[str]]:
    """(model name, flags of the first CPU listed); the flags are empty where /proc/cpuinfo is unreadable."""
    model, flags = platform.processor() or platform.machine(), frozenset()
    text = _cpuinfo()
    if text is None:
        return model or "unknown", flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        unnamed = model in ("", platform.machine(), platform.processor())
        if key in ("model name", "hardware", "cpu model") and unnamed:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return model or "unknown", flags


def isa_flags(flags: frozenset[str] | None = None) -> dict[str, bool]:
    """{reported name: present} for every flag in ``INT8_FLAGS``."""
    flags = cpu_model_and_flags()[1] if flags is None else flags
    return {name: flag in flags for flag, name in INT8_FLAGS.items()}


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def int8_cpu_kind() -> str:
    """This CPU as ``export --target-cpu`` names it: "arm" (not x86: dot products accumulate in int32),
    "vnni" or "no-vnni" (x86, by ``int8_dot_saturates``)."""
    if not is_x86():
        return "arm"
    return "no-vnni" if int8_dot_saturates() else "vnni"


@functools.lru_cache(maxsize=1)
def int8_dot_saturates() -> bool:
    """True on x86 CPUs without VNNI (AVX2 / AVX-512F only): their uint8 x int8 dot product
    (``vpmaddubsw``) sums pairs of products into a saturating int16, so full 8-bit weights can overflow.

    What each runtime does about it:

    * ONNX Runtime: ``session.x64quantprecision=1`` switches its U8S8 GEMMs to U8U8 kernels that widen
      to int16 first (no saturation); the runtime sets it by default on such CPUs (``exact_int8``),
      except for artifacts exported with ``--int8-weights pair-safe``, whose weights cannot saturate
      (the decision: ``runtime.backends.exact_int8_for``).
    * OpenVINO: no such switch; export makes its int8 weights pair-safe (``export.pairs``), so they cannot
      saturate.
    * LiteRT: XNNPACK widens before multiplying, nothing to do.

    ARM dot-product kernels accumulate in int32 and never saturate."""
    if not is_x86():
        return False
    if _cpuinfo() is None:
        return True  # unknown x86: the safe answer
    flags = cpu_model_and_flags()[1]
    return not any(flag in flags for flag in VNNI_FLAGS)
