"""The files of an exported artifact, their hashes, and its sidecar ``<artifact>.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..artifact_layout import artifact_files
from ..errors import CheckFailed, UsageError
from .cards import ARTIFACT_SCHEMA
from .files import read_json, sha256_file
from .validate import check_description

def hash_artifact(artifact: str | Path) -> dict[str, str]:
    """``{file name relative to the artifact's folder: sha256}`` of every file of the artifact: the
    sidecar's ``files`` field."""
    artifact = Path(artifact)
    return {str(p.relative_to(artifact.parent)): sha256_file(p) for p in artifact_files(artifact)}


def verify_artifact(artifact: str | Path, sidecar: dict[str, Any] | None = None) -> None:
    """Raise ``CheckFailed`` (one line) unless every file the sidecar hashes is present and matches.

    Sidecars with ``files`` as ``{name: sha256}`` cover every file; older ones (``files`` a list of
    names, or absent) have only ``sha256`` of the main file, which is checked.
    """
    artifact = Path(artifact)
    sidecar = read_sidecar(artifact) if sidecar is None else sidecar
    recorded = sidecar.get("files")
    main = sidecar.get("file") or artifact.name
    if not isinstance(recorded, dict):
        recorded = {main: sidecar["sha256"]} if sidecar.get("sha256") else {}
    elif main not in recorded:
        raise CheckFailed(f"{sidecar_path(artifact)}: its files do not include the artifact {main} itself "
                          f"(edited by hand?); re-export it")
    for name, digest in recorded.items():
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise CheckFailed(f"{sidecar_path(artifact)}: file {name!r} lies outside the artifact's folder")
        if name == main:
            path = artifact
        elif relative.stem == Path(main).stem:  # a renamed artifact: companions share its new stem
            path = artifact.with_name(artifact.stem + relative.suffix)
        else:
            path = artifact.parent / relative
        if not path.is_file():
            raise CheckFailed(f"{artifact}: {path.name} is missing (its sidecar lists it as part of the artifact)")
        if sha256_file(path) != digest:
            raise CheckFailed(f"{artifact}: {path.name} does not match the sha256 in its sidecar "
                              f"(corrupt or replaced after export)")


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
    if not isinstance(data, dict):
        raise UsageError(f"{side}: not an edgetl artifact sidecar (a JSON {type(data).__name__}, not an object)")
    if data.get("schema") != ARTIFACT_SCHEMA:
        raise UsageError(f"{side}: not an edgetl artifact sidecar (schema {data.get('schema')!r})")
    check_description(data, side)
    return data



def compiled_for_npu(artifact: str | Path, sidecar: dict[str, Any]) -> str | None:
    """One line saying why ``artifact`` cannot run on a CPU when it was compiled ahead for an NPU (a
    Vela ``*_vela.tflite``, a QNN EPContext model: ``target.cpu_runnable`` false in its sidecar), else
    None. Runtime, predict and bench say the same thing."""
    block = sidecar.get("target") if isinstance(sidecar.get("target"), dict) else {}
    if block.get("cpu_runnable") is not False:
        return None
    name = block.get("name") or "an NPU"
    uncompiled = f" its uncompiled model {block['uncompiled']} runs on a CPU;" if block.get("uncompiled") else ""
    return (f"{Path(artifact).name} is compiled for {name} ({block.get('compiled_by') or 'its NPU compiler'}) and "
            f"runs only there, not on a CPU:{uncompiled} `edgetl bench --target {name} --simulate` estimates it")
