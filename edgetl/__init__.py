"""edgetl: fine-tune an ImageNet backbone, export it for the edge, quantize, prune and bench it.

The public API is imported lazily so ``import edgetl`` (and ``edgetl.runtime``) stays free of
TensorFlow until a training or export function is actually used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "FinetuneConfig": "edgetl.training",
    "TrainedModel": "edgetl.training",
    "finetune": "edgetl.training",
    "ExportConfig": "edgetl.exporting",
    "export": "edgetl.exporting",
    "BenchConfig": "edgetl.benchmark",
    "bench": "edgetl.benchmark",
    "PruneConfig": "edgetl.pruning",
    "prune": "edgetl.pruning",
    "RunConfig": "edgetl.pipeline",
    "run": "edgetl.pipeline",
    "EdgeModel": "edgetl.runtime",
    "EdgetlError": "edgetl.errors",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'edgetl' has no attribute {name!r}")
    module = importlib.import_module(_API[name])
    # The packages are named for the job (edgetl.training) and the API for the verb (edgetl.finetune),
    # so a name never means a module at one moment and a function at another.
    return getattr(module, name)
