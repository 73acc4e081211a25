"""Targets: every device edgetl can export for and bench on (``registry``), what this machine has for
each (``probes``), and the bench of a registered target (``bench``)."""

from .probes import ETHOS_U_EXTRA, LEVELS, QNN_EXTRA, Availability
from .registry import (ETHOS_U_CONFIGS, KINDS, QNN_HTP, REGISTRY, ArtifactSpec, Target, check_available, get, names,
                       preflight_export, render_table, resolve, table)

__all__ = ["Target", "ArtifactSpec", "Availability", "REGISTRY", "KINDS", "LEVELS", "QNN_HTP", "get", "resolve",
           "check_available", "names", "preflight_export", "table", "render_table", "QNN_EXTRA", "ETHOS_U_EXTRA",
           "ETHOS_U_CONFIGS"]
