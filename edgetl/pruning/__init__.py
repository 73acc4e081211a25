"""`edgetl prune`: magnitude (unstructured) or structured (channel) pruning plus recovery fine-tuning
(``job.py``)."""

from ..choices import PruneMethod
from .config import PruneConfig, PruneResult
from .job import prune, prune_model
from .recovery import RecoveryData, recalibrate_batchnorm, recover

__all__ = ["PruneConfig", "PruneMethod", "PruneResult", "RecoveryData", "prune", "prune_model",
           "recalibrate_batchnorm", "recover"]
