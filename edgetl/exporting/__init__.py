"""`edgetl export`: a trained model -> ONNX / TFLite / OpenVINO artifacts with sidecars and parity checks.

Module map: ``config`` (ExportConfig), ``job`` (``export``, the format-free orchestration), ``backends``
(one ``ExportBackend`` per format and the registry), ``formats`` (names derived from the registry),
``results``, ``sidecar``, ``keras_graph`` (what is converted), ``calibration``, ``parity``, ``pairs``
(pair-safe INT8 weights), ``bias_correction`` (the maths; ``backends/*_bias.py`` apply it per format),
``qat`` and ``qat_formats`` (``--qat-epochs``: training, then the ranges carried into each format),
``sensitivity`` (accuracy-aware INT8), ``scratch`` (an export's temporary files, inside its staging folder),
``embedded_metadata``, ``target`` (``export --target``: ``qnn``, ``vela``). The sidecar format is
documented in models/README.md.
"""

from .config import ExportConfig
from .formats import (CALIBRATION_FILE, EXTENSIONS, FORMATS, INPUT_DTYPES, MODES, SUMMARY_FILE, artifact_name,
                      supported_modes)
from .job import export
from .results import ArtifactResult, ExportResult

__all__ = ["ExportConfig", "ExportResult", "ArtifactResult", "export", "FORMATS", "MODES", "INPUT_DTYPES",
           "EXTENSIONS", "SUMMARY_FILE", "CALIBRATION_FILE", "supported_modes", "artifact_name"]
