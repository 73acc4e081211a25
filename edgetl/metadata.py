"""Metadata files, fingerprints and atomic writes (numpy-free, TensorFlow-free).

Two JSON documents carry everything a later stage needs:

* ``edgetl.json`` in a model directory (written by finetune/prune): labels, preprocessing, backbone,
  training record. See ``models/README.md``.
* ``<artifact>.json`` next to every exported artifact (``model_int8.onnx`` -> ``model_int8.onnx.json``):
  labels, input/output tensors, preprocessing, quantization, calibration and source fingerprints,
  parity numbers. The runtime and the bench read nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import UsageError

MODEL_METADATA = "edgetl.json"
MODEL_FILE = "model.keras"
MODEL_SCHEMA = "edgetl.model/1"
ARTIFACT_SCHEMA = "edgetl.artifact/1"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_files(paths: Iterable[str | Path], root: str | Path | None = None) -> dict[str, Any]:
    """A set of files named by content: sorted per-file sha256, hashed together.

    Names are kept (relative to ``root``) for the manifest, but the fingerprint depends on content
    only, so the same images copied elsewhere fingerprint the same.
    """
    entries = []
    for path in paths:
        path = Path(path)
        name = str(path.relative_to(root)) if root else path.name
        entries.append({"file": name, "sha256": sha256_file(path)})
    entries.sort(key=lambda e: (e["sha256"], e["file"]))
    combined = hashlib.sha256("\n".join(e["sha256"] for e in entries).encode()).hexdigest()
    return {"fingerprint": combined, "count": len(entries), "files": entries}


def software_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    names = ["edgetl", "numpy", "pillow", *extra]
    versions = {"python": platform.python_version()}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename) so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=False, default=_json_default)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_default(value: Any) -> Any:
    # numpy scalars/arrays and Paths show up in metrics; keep the writer dependency-free.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def read_json(path: str | Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


@contextlib.contextmanager
def atomic_directory(out: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``out``, on failure it vanishes.

    Ctrl-C or an exception midway leaves ``out`` as it was (absent, or the previous result).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} exists and is not empty (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sidecar_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def read_sidecar(artifact: str | Path) -> dict[str, Any]:
    artifact = Path(artifact)
    side = sidecar_path(artifact)
    if not artifact.exists():
        raise UsageError(f"{artifact}: no such artifact")
    if not side.exists():
        raise UsageError(f"{artifact}: metadata sidecar {side.name} is missing next to it; "
                         f"re-export with `edgetl export` to create it")
    try:
        data = read_json(side)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{side}: unreadable metadata ({exc})") from None
    if data.get("schema") != ARTIFACT_SCHEMA:
        raise UsageError(f"{side}: not an edgetl artifact sidecar (schema {data.get('schema')!r})")
    return data


def read_model_metadata(model_dir: str | Path) -> dict[str, Any]:
    """``edgetl.json`` of a model directory, checked: one line naming the file and the field when it
    is missing, not JSON, or lacks what export/prune/bench read (``check_model_metadata``)."""
    model_dir = Path(model_dir)
    path = model_dir / MODEL_METADATA
    if not path.exists():
        raise UsageError(f"{model_dir}: no {MODEL_METADATA} (not a model directory written by "
                         f"`edgetl finetune` or `edgetl prune`)")
    try:
        data = read_json(path)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise UsageError(f"{path}: not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    check_model_metadata(data, path)
    return data


def check_model_metadata(data: Any, path: str | Path) -> None:
    """Required fields: ``labels`` (non-empty list of names), ``preprocessing.input_size`` ([H, W]
    positive integers); ``output`` and ``dataset`` must be objects when present."""
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object, got {type(data).__name__}")
    labels = data.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise UsageError(f"{path}: field 'labels' is {'missing' if labels is None else 'invalid'} "
                         f"(a non-empty list of class names)")
    recipe = data.get("preprocessing")
    size = recipe.get("input_size") if isinstance(recipe, dict) else None
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        field = "preprocessing" if not isinstance(recipe, dict) else "preprocessing.input_size"
        raise UsageError(f"{path}: field '{field}' is missing or invalid (the recipe with input_size [H, W])")
    for field in ("output", "dataset"):
        if field in data and data[field] is not None and not isinstance(data[field], dict):
            raise UsageError(f"{path}: field '{field}' must be an object")
