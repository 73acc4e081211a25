"""An export's scratch space, kept inside the output's own staging folder, and the converter write
failures that TensorFlow hides.

Converters write intermediates under ``tempfile.gettempdir()`` (the TFLite converter's SavedModel,
ONNX Runtime's calibration models) and so does the export itself (FP32 ONNX, calibration ranges). A
process killed with SIGKILL used to leave them in /tmp for good. ``scratch_folder`` puts all of them in
``<staging>/.edgetl-scratch``: the staging folder is ``atomic_directory``'s ``.OUT.<pid>.<random>.partial``,
which carries edgetl's marker, so the next write into the same parent removes it once its process is
dead (``metadata.remove_stale_temporaries``); on every normal exit the scratch goes before the staging
folder becomes ``--out``. Intermediates also land on the output's file system, so a full disk is
reported for the place the user chose.

TensorFlow's ``TFLiteConverter.from_keras_model`` catches the failure of its own SavedModel write (a
full disk, a file-size limit) and falls back to a Keras 2 path that fails with an unrelated
``TypeError``. ``scratch_folder`` records that write's error, so the export ends in one line saying what
happened (``writable.environment_os_error``; the CLI prints it like any other full disk). OpenVINO's
and ONNX Runtime's C++ writers drop errno altogether; a failure while the output's disk has no room
left is reported as that full disk (``writable.full_disk_error``).

Both are process-wide settings for the time of one export: exports in one process run one at a time
(the CLI, a search worker's stage), never from several threads at once.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from ..writable import environment_os_error, full_disk_error

SCRATCH_DIR = ".edgetl-scratch"


@contextlib.contextmanager
def scratch_folder(staging: Path, out: str | Path) -> Iterator[Path]:
    """``staging/.edgetl-scratch``, the process's temporary directory while the block runs; removed on
    exit. A failure whose cause is the machine's state (disk full, file-size limit, permissions), also
    one TensorFlow swallowed, is re-raised as that ``OSError``, naming ``out``."""
    scratch = Path(staging) / SCRATCH_DIR
    scratch.mkdir()
    previous = tempfile.tempdir
    tempfile.tempdir = str(scratch)
    hidden: list[BaseException] = []
    restore = _record_savedmodel_write_failures(hidden)
    try:
        yield scratch
    except Exception as exc:
        cause = environment_os_error([exc, *hidden], where=out) or full_disk_error(exc, scratch, out)
        if cause is None:
            raise
        raise cause from None
    finally:
        restore()
        tempfile.tempdir = previous
        shutil.rmtree(scratch, ignore_errors=True)


# The SavedModel writers TensorFlow's converters call inside a blanket ``except Exception``:
# Keras 3's archive (``from_keras_model``) and TensorFlow's own saver (Keras 2 models).
_SWALLOWED_WRITERS = (("keras.src.export.saved_model_export_archive", "SavedModelExportArchive", "write_out"),
                      ("tensorflow.python.saved_model.save", None, "save"))


def _record_savedmodel_write_failures(failures: list[BaseException]) -> Callable[[], None]:
    """Wrap the writers of ``_SWALLOWED_WRITERS`` that are loaded so their exceptions are appended to
    ``failures`` (and still raised); returns the function that unwraps them."""
    undo: list[Callable[[], None]] = []
    for module_name, class_name, name in _SWALLOWED_WRITERS:
        module = sys.modules.get(module_name)
        owner = getattr(module, class_name, None) if class_name else module
        if owner is None or not callable(getattr(owner, name, None)):
            continue
        own = vars(owner).get(name)
        original = getattr(owner, name)

        def recording(*args, _original=original, **kwargs):
            try:
                return _original(*args, **kwargs)
            except Exception as exc:
                failures.append(exc)
                raise

        setattr(owner, name, recording)
        undo.append(lambda owner=owner, name=name, own=own: (setattr(owner, name, own) if own is not None
                                                            else delattr(owner, name)))
    return lambda: [restore() for restore in reversed(undo)]
