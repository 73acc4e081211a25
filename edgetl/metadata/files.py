"""JSON and content-hash helpers (numpy-free, TensorFlow-free): sha256 of a file, a fingerprint of a set
of files, the installed versions, atomic JSON writes."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterable


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

