"""`edgetl bench`: latency, memory, size and accuracy of exported artifacts against their Keras reference.

``config`` (what a run is given and returns), ``machine`` (CPU, threads, memory), ``inputs`` (what the
artifacts are fed), ``placement`` (devices of a target, where nodes ran), ``reference`` (the Keras FP32
reference, accuracy), ``rows`` (bench.json entries and rows, bench.csv, the recommendation),
``significance`` (paired latency ratios and accuracy intervals), ``run`` (``bench`` itself).
"""

from ..runtime.backends import target_devices
from .config import BENCH_SCHEMA, RUNTIMES, TARGETS, Artifact, BenchConfig, BenchResult, bench_schema, expand_artifacts
from .placement import StrictPlacementError, check_placement
from .rows import ROW_COLUMNS
from .run import Plan, bench, preflight

__all__ = ["BENCH_SCHEMA", "RUNTIMES", "TARGETS", "Artifact", "BenchConfig", "BenchResult", "bench_schema",
           "expand_artifacts", "StrictPlacementError", "check_placement", "target_devices", "ROW_COLUMNS", "Plan",
           "bench", "preflight"]
