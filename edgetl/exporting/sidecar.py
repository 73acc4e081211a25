"""The artifact sidecar (``<artifact>.json``, schema ``ARTIFACT_SCHEMA``, documented in
models/README.md), built in one place for ``export`` and ``export --target``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..choices import Mode
from ..metadata import ARTIFACT_SCHEMA, sha256_file, software_versions

VERSIONS = ["tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "openvino", "nncf", "ai-edge-litert"]


def quantization_block(mode: str, method: str | None, details: dict, calibration: dict | None,
                       float_layers: list[str], per_channel: bool | None = None) -> dict[str, Any]:
    """``quantization``: fp32 is mode "none"; calibration is recorded for int8 only."""
    return {"mode": "none" if mode == Mode.FP32 else mode, "method": method,
            "per_channel": mode == Mode.INT8 if per_channel is None else per_channel,
            "details": details, "calibration": calibration if mode == Mode.INT8 else None,
            "float_layers": float_layers}


def artifact_sidecar(path: Path, fmt: str, files: list[Path], source, source_info: dict[str, Any], *,
                     input_names: dict, batch: int | None, input_dtype: str, input_quantization: dict | None,
                     output_names: dict, quantization: dict[str, Any], parity: dict[str, Any],
                     versions: list[str] = VERSIONS, layout: str = "NHWC", **blocks: Any) -> dict[str, Any]:
    """The sidecar of the artifact at ``path`` (main file first in ``files``, every file hashed).
    ``input_names`` / ``output_names``: what the format's client API sees (``ExportBackend.io_names``);
    ``blocks``: further top-level blocks (``target``)."""
    height, width = source.input_size
    hashes = {f.name: sha256_file(f) for f in files}
    return {
        "schema": ARTIFACT_SCHEMA,
        "format": fmt,
        "file": path.name,
        "files": hashes,
        "sha256": hashes[path.name],  # the main file, for readers older than `files`
        "size_bytes": sum(f.stat().st_size for f in files),
        "labels": list(source.labels),
        "input": {**input_names, "layout": layout, "dtype": input_dtype,
                  "shape": [batch, 3, height, width] if layout == "NCHW" else [batch, height, width, 3],
                  "quantization": input_quantization},
        "output": {**output_names, "kind": source.output_kind, "dtype": "float32",
                   "softmax": "apply in float" if source.output_kind == "logits" else "in graph"},
        "preprocessing": {**source.recipe.to_dict(), "layout": layout},
        "quantization": quantization,
        "source_model": {"sha256": source_info["sha256"], "path": source_info["path"],
                         "backbone": source_info["backbone"], "kind": source_info.get("kind", "keras"),
                         **({"output_kind_found": source.kind_reason} if getattr(source, "kind_reason", None)
                            else {})},
        "versions": software_versions(versions),
        "parity": parity,
        **blocks,
    }


def write_artifact_sidecar(path: Path, sidecar: dict[str, Any]) -> None:
    """The one writer of ``<artifact>.json``: through the typed ``ArtifactSidecar``, so what is written
    is what every reader (runtime, bench, the next export) accepts."""
    from ..metadata import ArtifactSidecar, sidecar_path

    ArtifactSidecar.from_dict(sidecar, sidecar_path(path)).write(path)
