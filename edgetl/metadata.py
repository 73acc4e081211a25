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
import ctypes
import ctypes.util
import datetime
import errno
import fnmatch
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import secrets
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import CheckFailed, UsageError, raise_if_terminated

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


# -- output folders ---------------------------------------------------------------------------------
# One rule for every verb (finetune, export, prune, bench, run): edgetl replaces only a folder it wrote,
# never one that is, holds or lies inside an input of the command, never an unrelated non-empty folder,
# never a file. Every folder edgetl writes carries OUTPUT_MARKER (verb, time, writer); the same file
# inside a ``.NAME.<pid>.<random>.partial`` temp folder names the process that owns it.
OUTPUT_MARKER = ".edgetl-output.json"
OUTPUT_SCHEMA = "edgetl.output/1"

# Folders written before the marker existed are edgetl's when they hold the document their verb wrote
# (with its schema) and nothing but names edgetl writes: a user's folder that merely holds a copied
# edgetl.json next to other files is not taken for edgetl's.
_LEGACY_DOCUMENTS = {MODEL_METADATA: "edgetl.model/", "export_summary.json": "edgetl.export_summary/",
                     "bench.json": "edgetl.bench/", "sweep.json": "edgetl.prune-sweep/"}
_LEGACY_NAMES = (MODEL_FILE, MODEL_METADATA, "training.png", "export_summary.json", "calibration.json", "model_*",
                 "bench.json", "bench.csv", "report.md", "report.html", "sweep.*", "sparsity_*", "artifacts",
                 "stage.json", "train", "val", "data", "model", "export", "bench", ".*.partial", ".*.tmp",
                 ".*.old*")
_RUN_STAGES = ("data", "model", "export", "bench")  # `edgetl run` sub-directories (edgetl/pipeline.py)
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.(?P<kind>partial|old)$")


def _host() -> str:
    return socket.gethostname()


def output_marker(verb: str) -> dict[str, Any]:
    version = None
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        version = importlib.metadata.version("edgetl")
    return {"schema": OUTPUT_SCHEMA, "verb": verb,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "pid": os.getpid(), "host": _host(), "edgetl": version}


def read_output_marker(folder: str | Path) -> dict[str, Any] | None:
    try:
        marker = read_json(Path(folder) / OUTPUT_MARKER)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("schema") == OUTPUT_SCHEMA else None


def is_edgetl_output(folder: str | Path) -> bool:
    """Whether ``folder`` was written by edgetl: its marker, or (older edgetl) its verb's document."""
    folder = Path(folder)
    return read_output_marker(folder) is not None or _legacy_output(folder)


def _legacy_output(folder: Path) -> bool:
    try:
        names = [p.name for p in folder.iterdir()]
    except OSError:
        return False
    if not all(any(fnmatch.fnmatchcase(n, pattern) for pattern in _LEGACY_NAMES) for n in names):
        return False
    for document, schema in _LEGACY_DOCUMENTS.items():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if str(read_json(folder / document).get("schema", "")).startswith(schema):
                return True
    with contextlib.suppress(OSError, ValueError, AttributeError):
        stage = read_json(folder / "stage.json")
        if "stage" in stage and "key" in stage:
            return True
    # an `edgetl run` root: nothing but stage folders, at least one of them finished
    return bool(names) and set(names) <= set(_RUN_STAGES) and any(
        (folder / n / "stage.json").is_file() for n in names)


def _same_or_inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def check_output_dir(out: str | Path, inputs: Iterable[str | Path | None] = (), overwrite: bool = True,
                     option: str = "--out") -> Path:
    """Refuse, before any work, an output folder edgetl must not replace (``UsageError``, exit 2).

    ``out`` may be absent or empty; a non-empty ``out`` must be edgetl's own output
    (``is_edgetl_output``) and is replaced only with ``overwrite``. ``inputs`` (data, model, artifacts,
    calibration/check folders, reference: files or folders) may not be ``out``, inside it, or hold it.
    """
    from .writable import check_writable

    out = Path(out)
    try:
        if not out.is_dir() and os.path.lexists(out):
            raise UsageError(f"{option} {out} is an existing file, not a folder; choose a folder path")
    except OSError as exc:
        raise UsageError(f"{option} {out}: {exc.strerror or exc}") from None
    check_writable(out, option)  # not the working directory, and its parent writable
    target = out.resolve()
    for given in inputs:
        if given is None or str(given) == "":
            continue
        source = Path(given).resolve()
        if _same_or_inside(source, target):
            what = "is" if source == target else f"holds {given},"
            raise UsageError(f"{option} {out} {what} an input of this command; "
                             f"edgetl never replaces its inputs: choose another folder")
        if target.is_relative_to(source):
            raise UsageError(f"{option} {out} lies inside {given}, an input of this command; "
                             f"choose a folder outside it")
    try:
        empty = not out.is_dir() or not any(out.iterdir())
    except FileNotFoundError:  # replaced by a concurrent writer meanwhile
        return out
    except OSError as exc:
        raise UsageError(f"{option} {out}: {exc.strerror or exc}") from None
    if empty:
        return out
    if not is_edgetl_output(out):
        raise UsageError(f"{option} {out} is not empty and was not written by edgetl (no {OUTPUT_MARKER}); "
                         f"edgetl replaces only its own output folders: choose a new or empty folder")
    if not overwrite:
        raise UsageError(f"{option} {out} holds earlier edgetl output (pass --overwrite to replace it)")
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    with contextlib.suppress(OSError, IndexError):  # a zombie is dead too (Linux)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def remove_stale_temporaries(parent: str | Path) -> list[Path]:
    """Delete the ``.NAME.<pid>.*.partial`` / ``.old`` folders that dead edgetl processes on this host
    left in ``parent`` (SIGKILL, power loss). A temp folder counts as edgetl's only with its marker
    naming this host (or, for a partial killed before its marker was written, when it is empty)."""
    removed = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir():
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        marker = read_output_marker(entry)
        try:
            ours = marker.get("host") == _host() if marker else (match["kind"] == "partial"
                                                                   and not any(entry.iterdir()))
        except OSError:
            continue
        if ours:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def _parent_lock(parent: Path) -> Iterator[None]:
    """Serialise the final swap of writers in one folder: an flock on the folder itself (no lock file
    to leave behind). Without fcntl (Windows) the swap is unserialised."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


_RENAME_EXCHANGE = 2
_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE), so ``b`` never disappears for a
    reader; False where the kernel, libc or file system cannot."""
    global _libc
    if not hasattr(os, "sched_getaffinity"):  # not Linux
        return False
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.renameat2  # noqa: B018 (glibc >= 2.28)
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    at_fdcwd = -100
    if _libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))  # ENOENT is FileNotFoundError


def _commit(tmp: Path, out: Path) -> None:
    """Put ``tmp`` in the place of ``out``: last writer wins, ``out`` is always a complete folder."""
    old = None
    with _parent_lock(out.parent):
        if os.path.lexists(out):
            if not out.is_dir():
                raise UsageError(f"{out} became a file while edgetl was writing it; nothing was replaced")
            try:
                exchanged = _exchange(tmp, out)
            except FileNotFoundError:  # removed meanwhile by someone else than edgetl
                exchanged = False
            if exchanged:
                old = tmp  # now holds the previous output
            elif not os.path.lexists(out):
                os.replace(tmp, out)
            else:  # no atomic exchange here: writers stay serialised, a reader may briefly miss ``out``
                old = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.old")
                os.replace(out, old)
                os.replace(tmp, out)
        else:
            os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(out: str | Path, overwrite: bool = True, *, inputs: Iterable[str | Path | None] = (),
                     verb: str = "edgetl") -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``out``, on failure it vanishes.

    ``out`` must pass ``check_output_dir`` (with ``inputs``). Ctrl-C, SIGTERM (through the CLI) or an
    exception midway leaves ``out`` as it was (absent, or the previous result); temp folders of dead
    processes in the same parent are removed first. The result carries ``OUTPUT_MARKER``.
    """
    out = Path(out)
    inputs = tuple(inputs)
    check_output_dir(out, inputs, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".partial", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        write_json(tmp / OUTPUT_MARKER, output_marker(verb))
        yield tmp
        check_output_dir(out, inputs, overwrite=True)  # still ours to replace (checked again, cheaply)
        raise_if_terminated()
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- artifact files ---------------------------------------------------------------------------------
# Files an artifact consists of besides its main file, by suffix of the main file. Formats that add
# companions (e.g. a compiled EPContext blob next to an .onnx) add them here so the sidecar hashes them.
ARTIFACT_COMPANIONS: dict[str, tuple[str, ...]] = {".xml": (".bin",)}


def artifact_files(artifact: str | Path) -> list[Path]:
    """Every file of an artifact, main file first (OpenVINO: the .xml and its .bin weights)."""
    artifact = Path(artifact)
    return [artifact, *(artifact.with_suffix(s) for s in ARTIFACT_COMPANIONS.get(artifact.suffix.lower(), ()))]


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
