"""edgetl: fine-tune an ImageNet backbone, export it for the edge, quantize, prune and bench it.

The public API is imported lazily so ``import edgetl`` (and ``edgetl.runtime``) stays free of
TensorFlow until a training or export function is actually used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "FinetuneConfig": "edgetl.finetune",
    "TrainedModel": "edgetl.finetune",
    "finetune": "edgetl.finetune",
    "ExportConfig": "edgetl.export",
    "export": "edgetl.export",
    "BenchConfig": "edgetl.bench",
    "bench": "edgetl.bench",
    "PruneConfig": "edgetl.prune",
    "prune": "edgetl.prune",
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
    # `edgetl.finetune` is both a module and its main function: hand out the function.
    return getattr(module, name)
