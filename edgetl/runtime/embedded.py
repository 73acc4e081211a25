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
import zipfile
from pathlib import Path
from typing import Any

EMBEDDED_SCHEMA = "edgetl.embedded/1"
EMBEDDED_KEY = "edgetl"  # ONNX metadata_props key; OpenVINO rt_info section
TFLITE_FILE = "edgetl.json"  # associated file inside a .tflite


def read_embedded(path: str | Path) -> dict[str, Any] | None:
    """The embedded description of an artifact, or None when it carries none."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".tflite":
            text = _tflite_text(path)
        elif suffix == ".onnx":
            text = _onnx_text(path)
        elif suffix == ".xml":
            text = _openvino_text(path)
        else:
            return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if not text:
        return None
    data = json.loads(text)
    return data if data.get("schema") == EMBEDDED_SCHEMA else None


def _tflite_text(path: Path) -> str | None:
    # A .tflite with associated files is a flatbuffer followed by a zip archive; zipfile finds the
    # archive from its end-of-central-directory record.
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        return archive.read(TFLITE_FILE).decode() if TFLITE_FILE in archive.namelist() else None


def _onnx_text(path: Path) -> str | None:
    try:
        import onnx
    except ImportError:  # device installs have onnxruntime only
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.get_modelmeta().custom_metadata_map.get(EMBEDDED_KEY)
    model = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in model.metadata_props if p.key == EMBEDDED_KEY), None)


def _openvino_text(path: Path) -> str | None:
    # The IR's rt_info is plain XML: no need to read the model (and its weights) with OpenVINO.
    import xml.etree.ElementTree as ElementTree

    rt_info = ElementTree.parse(path).getroot().find("rt_info")
    node = rt_info.find(f"{EMBEDDED_KEY}/metadata") if rt_info is not None else None
    return node.get("value") if node is not None else None
