"""Output folders: the one rule for what edgetl may replace, the marker it leaves, atomic directories."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime
import errno
import fnmatch
import importlib.metadata
import os
import re
import secrets
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import UsageError, raise_if_terminated
from .cards import MODEL_FILE, MODEL_METADATA
from .files import read_json, write_json

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
    from ..writable import check_writable

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

