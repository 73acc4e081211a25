"""What this CPU's integer kernels can do; stdlib only (device apps import it through the runtime)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.lru_cache(maxsize=1)
def int8_dot_saturates() -> bool:
    """True on x86 CPUs without VNNI (AVX2 / AVX-512F only): their uint8 x int8 dot product
    (``vpmaddubsw``) sums pairs of products into a saturating int16, so full 8-bit weights can overflow.

    What each runtime does about it:

    * ONNX Runtime: ``session.x64quantprecision=1`` switches its U8S8 GEMMs to U8U8 kernels that widen
      to int16 first (no saturation); the runtime sets it by default on such CPUs (``exact_int8``),
      except for artifacts exported with ``--int8-weights pair-safe``, whose weights cannot saturate.
    * OpenVINO: no such switch; export makes its int8 weights pair-safe (``export.pairs``), so they cannot
      saturate.
    * LiteRT: XNNPACK widens before multiplying, nothing to do.

    ARM dot-product kernels accumulate in int32 and never saturate."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # unknown x86: the safe answer
    return not any(flag in flags for flag in VNNI_FLAGS)
