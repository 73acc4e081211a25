"""Output folders that can actually be written, checked before any work, and OS write failures as
one line.

Every verb writes its ``--out`` through ``metadata.atomic_directory``: a temporary sibling renamed
into place. So what must be writable is ``--out``'s parent (or its nearest existing ancestor, which
gets the missing folders), and ``--out`` must not be a file or the folder the process runs in.
``check_writable`` checks exactly that (``metadata.check_output_dir``, the one output-folder rule,
calls it first), so an unwritable ``--out`` fails in a second instead of
after training or conversion.

``describe_os_error`` is what ``cli.main`` prints for the OS errors that are the machine's state,
not edgetl's bug (permission, read-only file system, disk or quota full, file-size limit) when one
is raised mid-write; every other ``OSError`` keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from .errors import UsageError

# errno values that describe the machine (permissions, space, limits), never a code path of edgetl.
ENVIRONMENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                                errno.EFBIG})


def check_writable(out: str | Path, option: str = "--out") -> None:
    """UsageError (one line) unless ``out`` can be written as an output folder: not a file, not the
    current directory or one holding it (replacing it would delete the shell's working directory),
    and its parent (or nearest existing ancestor) writable, probed by creating and removing a
    hidden folder there."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{option} {out} is an existing file, not a folder; name a folder")
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise UsageError(f"{option} {out} is the current directory (or holds it), which edgetl would "
                         f"replace as a whole; name a new folder, e.g. {option} ./edgetl-out")
    ancestor = resolved.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{option} {out}: {ancestor} is a file, so no folder can be made under it")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".edgetl-write-probe-", dir=ancestor))
    except OSError as exc:
        raise UsageError(f"{option} {out} cannot be written: {ancestor}: {exc.strerror or exc}") from None


def describe_os_error(exc: BaseException) -> str | None:
    """One line for an OSError caused by the machine's state (see ENVIRONMENT_ERRNOS), else None."""
    if not isinstance(exc, OSError) or exc.errno not in ENVIRONMENT_ERRNOS:
        return None
    where = f"{exc.filename}: " if exc.filename else ""
    hint = {errno.ENOSPC: " (the disk is full)", errno.EDQUOT: " (the disk quota is used up)",
            errno.EFBIG: " (a file-size limit, ulimit -f)"}.get(exc.errno, "")
    return f"{where}{exc.strerror or exc}{hint}".replace("\n", " ")


def environment_os_error(failures: Iterable[BaseException], where: str | Path | None = None) -> OSError | None:
    """The machine-state failure (ENVIRONMENT_ERRNOS) among ``failures`` and their causes, as an
    ``OSError`` that ``describe_os_error`` turns into one line; None when there is none.

    Native libraries report such failures as text: TensorFlow raises ``ResourceExhaustedError("...;
    No space left on device")``, not an ``OSError``. Their message is read only for exceptions raised
    by TensorFlow (its ``OpError`` and converter errors), so an edgetl bug whose message happens to
    say "Permission denied" keeps its traceback. ``where`` names the place in the message (the
    native message's path is a scratch file, gone by the time the user reads it).
    """
    seen: set[int] = set()
    pending = list(failures)
    while pending:
        exc = pending.pop(0)
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
            return exc if where is None else OSError(exc.errno, exc.strerror, str(where))
        if type(exc).__module__.startswith("tensorflow"):
            text = str(exc)
            for code in sorted(ENVIRONMENT_ERRNOS):
                if os.strerror(code) in text:
                    return OSError(code, os.strerror(code), str(where) if where is not None else None)
        pending += [exc.__cause__, exc.__context__]
    return None


# Less free space than this, right after a native writer failed there, means the disk filled up.
FULL_DISK_BYTES = 1 << 20


def full_disk_error(failure: BaseException, place: str | Path, where: str | Path | None = None) -> OSError | None:
    """ENOSPC (naming ``where``) when ``failure`` is not one of edgetl's own errors and the file
    system holding ``place`` has less than FULL_DISK_BYTES free; else None.

    For the C++ writers that lose errno on the way to Python: OpenVINO's ``save_model`` raises
    ``RuntimeError("basic_ios::clear: iostream error")``, ONNX Runtime's optimiser writes a truncated
    model that the next reader rejects as corrupt protobuf. Call it while the failed write's partial
    files are still in place, so the disk is still as full as the writer found it.
    """
    from .errors import EdgetlError

    if isinstance(failure, (EdgetlError, OSError)):
        return None
    try:
        free = shutil.disk_usage(place).free
    except OSError:
        return None
    if free >= FULL_DISK_BYTES:
        return None
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where if where is not None else place))
