"""A full disk or a file-size limit met inside a converter's or runtime's own writer (TFLite converter,
OpenVINO and ONNX Runtime C++ writers): one line naming --out, exit 2, nothing half-written left."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgetl.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_data(sample_subset) -> Path:
    """2 images per class: enough for an export's calibration and parity."""
    return sample_subset(2)


def _tmpfs_prefix(mount_point: Path, size: str) -> list[str] | None:
    """A command prefix that runs the rest with a ``size`` tmpfs mounted on ``mount_point`` (a private
    mount namespace of an unprivileged user namespace: no root needed, nothing mounted outside it);
    None where the kernel or util-linux does not allow it."""
    if not shutil.which("unshare"):
        return None
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "mount", "-t", "tmpfs",
                            "-o", f"size={size}", "tmpfs", str(mount_point)], capture_output=True)
    if probe.returncode != 0:
        return None
    script = 'mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@"'
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", size, str(mount_point)]


def _export_on_a_full_disk(tmp_path: Path, size: str, model: Path, *args: str):
    """``edgetl export MODEL --out DISK/artifacts ARGS`` with a ``size`` tmpfs on DISK (skips where no tmpfs
    can be mounted); (the finished process, its --out). Its stderr ends with what was left on DISK."""
    disk = tmp_path / "disk"
    disk.mkdir()
    prefix = _tmpfs_prefix(disk, size)
    if prefix is None:
        pytest.skip("cannot mount a tmpfs here (no unprivileged user namespaces)")
    out = disk / "artifacts"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "DISK": str(disk)}
    script = ("import os, sys; from edgetl.cli import main; code = main(sys.argv[1:]); "
              "print(sorted(os.listdir(os.environ['DISK'])), file=sys.stderr); sys.exit(code)")
    done = subprocess.run([*prefix, sys.executable, "-c", script, "export", str(model), "--out", str(out), *args],
                          env=env, capture_output=True, text=True, timeout=300)
    return done, out


def test_full_disk_inside_the_tflite_converter_isone_line(runtime_model_dir, small_data, tmp_path):
    """TensorFlow's converter writes a SavedModel first and swallows that write's error (then fails with
    an unrelated TypeError): a real full disk (a 64 KiB tmpfs holding --out, the converter's scratch
    with it) gives one line naming --out and nothing left there."""
    done, out = _export_on_a_full_disk(tmp_path, "64k", runtime_model_dir, "-f", "tflite", "--check", str(small_data))
    err = [line for line in done.stderr.strip().splitlines() if not line.startswith("parity images:")]
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert err[-2] == f"edgetl: error: {out}: No space left on device (the disk is full)"
    assert err[-1] == "[]"  # what was left on that disk, seen from inside the namespace: nothing


@pytest.mark.parametrize("fmt, modes, size", [("openvino", "fp32", "64k"), ("onnx", "fp32,int8", "100k")])
def test_full_disk_inside_native_writers_isone_line(runtime_model_dir, small_data, tmp_path, fmt, modes, size):
    """OpenVINO's save_model (``RuntimeError: basic_ios::clear``) and ONNX Runtime's optimiser (a
    truncated model, then a protobuf error) lose errno: a full disk there is still one line."""
    done, out = _export_on_a_full_disk(tmp_path, size, runtime_model_dir, "-f", fmt, "-q", modes, "--calib",
                                       str(small_data), "--calib-size", "8", "--check", str(small_data))
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "ERROR" not in done.stderr
    err = done.stderr.strip().splitlines()
    assert err[-2] == f"edgetl: error: {out}: No space left on device (the disk is full)"
    assert err[-1] == "[]"


def test_file_size_limit_inside_the_converter_isone_line(runtime_model_dir, small_data, tmp_path, capfd):
    """The same hidden failure from a file-size limit (EFBIG, ``ulimit -f``), in this process."""
    out = tmp_path / "artifacts"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (48 << 10, hard))  # the tiny CNN's SavedModel is ~130 KB
    try:
        code = main(["export", str(runtime_model_dir), "--out", str(out), "-f", "tflite", "--check", str(small_data)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and not any("Traceback" in line for line in err)
    assert err[-1] == f"edgetl: error: {out}: File too large (a file-size limit, ulimit -f)"
    assert list(tmp_path.iterdir()) == []
