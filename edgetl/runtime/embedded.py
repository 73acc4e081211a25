"""Read the edgetl description that export embeds inside an artifact (numpy-free, TensorFlow-free).

Export writes the same description three ways (``edgetl.exporting.embedded_metadata``):

* ONNX: ``metadata_props`` key ``edgetl`` (JSON), next to Model API's ``model_info ...`` keys;
* OpenVINO IR: ``rt_info`` ``edgetl/metadata`` (JSON), next to Model API's ``model_info`` section;
* TFLite: ``edgetl.json`` among the associated files (the zip appended to the flatbuffer, beside the
  ``labels.txt`` that TFLite Metadata points at).

The description is the sidecar without what can only be known about the finished file (sha256, size,
parity), so ``EdgeModel.load`` can run an artifact that travelled without its sidecar.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
import zipfile
from pathlib import Path
from typing import Any

from ..artifact_layout import EMBEDDED_KEY, TFLITE_FILE  # noqa: F401  (export writes them from here)

EMBEDDED_SCHEMA = "edgetl.embedded/1"


def read_embedded(path: str | Path) -> dict[str, Any] | None:
    """The embedded description of an artifact, or None when it carries none. Each format's runtime
    backend reads its own container (``Backend.embedded_text``)."""
    from .backends.registry import BACKENDS, FORMAT_BY_SUFFIX

    path = Path(path)
    fmt = FORMAT_BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        return None
    try:
        text = BACKENDS[fmt].embedded_text(path)
        data = json.loads(text) if text else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, ElementTree.ParseError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == EMBEDDED_SCHEMA else None
