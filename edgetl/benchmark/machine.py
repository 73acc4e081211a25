"""The machine a bench ran on: CPU, threads, and this process's memory while an artifact runs."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

from ..runtime.cpu import cpu_model_and_flags, isa_flags


def machine_info() -> dict[str, Any]:
    model, flags = cpu_model_and_flags()
    memory = None
    try:
        import psutil

        memory = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": model or "unknown",
        "architecture": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gib": memory,
        "isa": isa_flags(flags),
        "os": f"{platform.system()} {platform.release()}",
        # Other processes competing for the cores make every latency here slower and noisier.
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def thread_settings(threads: int | None) -> dict[str, Any]:
    return {
        "requested": threads,
        # What each runtime does when --threads is not given, so the numbers can be reproduced.
        "defaults": {"onnxruntime": "intra-op pool = physical cores", "litert": f"num_threads = {os.cpu_count()}",
                     "openvino": "INFERENCE_NUM_THREADS = plugin default (all cores)"},
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "OPENBLAS_NUM_THREADS")
                if k in os.environ},
    }


class PeakRss:
    """Peak resident memory of this process during a block.

    Linux: the high-water mark (VmHWM) is reset by writing 5 to /proc/self/clear_refs and read back
    afterwards: exact and free of sampling overhead. Elsewhere: ``ru_maxrss`` (peak since process start).
    """

    def __enter__(self) -> "PeakRss":
        self.scope = "block"
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.scope = "process"
        self.before_mb = current_rss_mb()
        self.peak_mb = self.before_mb
        return self

    def __exit__(self, *exc) -> None:
        hwm = _proc_status_mb("VmHWM") if self.scope == "block" else None
        if hwm is None:
            import resource

            self.scope = "process"
            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            hwm = kb / 1024 if sys.platform != "darwin" else kb / 2**20
        self.peak_mb = max(hwm, current_rss_mb())

    def summary(self) -> dict[str, Any]:
        """bench.json's ``memory`` block."""
        return {"rss_before_mb": self.before_mb, "peak_rss_mb": self.peak_mb, "scope": self.scope}


def _proc_status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_rss_mb() -> float:
    rss = _proc_status_mb("VmRSS")
    if rss is None:
        import psutil

        rss = psutil.Process().memory_info().rss / 2**20
    return rss
