"""Nothing lost, nothing half-trusted: output folders, artifact hashes, stage reuse, signals and
concurrent writers (issue 12, items 1-3, 13, 14). Real CLI (`edgetl.cli.main`), real exports of the
session's tiny model, real subprocesses and signals."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.cli import main
from edgetl.errors import CheckFailed, UsageError
from edgetl.exporting.scratch import SCRATCH_DIR
from edgetl.metadata import (OUTPUT_MARKER, atomic_directory, check_output_dir, is_edgetl_output,
                             read_json, remove_stale_temporaries, sha256_file, sidecar_path, verify_artifact,
                             write_json)

REPO = Path(__file__).resolve().parents[1]
XML, ONNX = "model_openvino_fp32.xml", "model_onnx_fp32.onnx"


def _images(root: Path, per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("ants", "bees"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgetl: error:"), err
    return err[0]


def _partials(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.endswith((".partial", ".old")) or ".old-" in p.name)


@pytest.fixture(scope="module")
def exported(tiny_model_dir, sample_dir, tmp_path_factory) -> Path:
    """FP32 ONNX + OpenVINO of the tiny model, written by the real CLI."""
    out = tmp_path_factory.mktemp("safety") / "artifacts"
    assert main(["export", str(tiny_model_dir), "--out", str(out), "-f", "onnx,openvino",
                 "--check", str(sample_dir)]) == 0
    return out


# -- 1. one output-folder rule ------------------------------------------------------------------------
def test_finetune_out_that_is_holds_or_is_unrelated_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import edgetl.training.job as ft

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(ft, "load_splits", no_training)
    data = _images(tmp_path / "photos" / "data")
    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    (unrelated / "todo.txt").write_text("mine")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    before = _snapshot(tmp_path)
    base = ["finetune", str(data), "--backbone", "mobilenet_v3_small", "--weights", "none", "--epochs", "1"]
    for out, says in ((data, "input of this command"), (data.parent, "input of this command"),
                      (data / "ants" / "model", "lies inside"), (unrelated, "not written by edgetl"),
                      (a_file, "existing file")):
        assert main([*base, "--out", str(out)]) == 2, out
        assert says in _one_line_error(capsys), out
    assert _snapshot(tmp_path) == before  # nothing deleted, nothing added


def test_check_output_dir_rules(tmp_path):
    ours = tmp_path / "ours"
    with atomic_directory(ours, verb="export") as tmp:
        (tmp / "a.txt").write_text("1")
    marker = read_json(ours / OUTPUT_MARKER)
    assert marker["verb"] == "export" and marker["pid"] == os.getpid() and is_edgetl_output(ours)
    with atomic_directory(ours, verb="export") as tmp:  # its own previous output: replaced
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in ours.iterdir()) == [OUTPUT_MARKER, "b.txt"]
    with pytest.raises(UsageError, match="--overwrite"):
        check_output_dir(ours, overwrite=False)
    # Older edgetl wrote no marker: recognised by its document and nothing but edgetl's names.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    write_json(legacy / "edgetl.json", {"schema": "edgetl.model/1"})
    (legacy / "model.keras").write_bytes(b"k")
    assert is_edgetl_output(legacy)
    (legacy / "my-notes.txt").write_text("mine")
    assert not is_edgetl_output(legacy)
    with pytest.raises(UsageError, match="not written by edgetl"):
        check_output_dir(legacy)
    copied = tmp_path / "copied"  # a stray edgetl.json of another schema
    copied.mkdir()
    write_json(copied / "edgetl.json", {"schema": "something/else"})
    assert not is_edgetl_output(copied)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output_dir(empty, overwrite=False) == empty


def test_export_refuses_unrelated_and_input_folders_and_replaces_its_own(exported, tiny_model_dir, sample_dir,
                                                                        tmp_path, capsys):
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "keep.txt").write_text("mine")
    base = ["export", str(tiny_model_dir), "-f", "onnx", "--check", str(sample_dir)]
    for out, says in ((unrelated, "not written by edgetl"), (tiny_model_dir / "artifacts", "lies inside"),
                      (tiny_model_dir.parent, "input of this command"), (sample_dir, "input of this command")):
        assert main([*base, "--out", str(out)]) == 2
        assert says in _one_line_error(capsys)
    for out, says in ((unrelated, "not written by edgetl"), (tiny_model_dir / "pruned", "lies inside"),
                      (tiny_model_dir, "input of this command")):  # prune: the same rule
        assert main(["prune", str(tiny_model_dir), "--out", str(out), "--epochs", "0"]) == 2
        assert says in _one_line_error(capsys)
    assert (unrelated / "keep.txt").read_text() == "mine" and not (tiny_model_dir / "artifacts").exists()
    assert not (tiny_model_dir / "pruned").exists()
    # Rerunning export into its own previous --out still replaces it.
    out = tmp_path / "again"
    shutil.copytree(exported, out)
    assert main([*base, "--out", str(out)]) == 0
    assert read_json(out / OUTPUT_MARKER)["verb"] == "export" and not (out / XML).exists()
    assert (out / ONNX).is_file() and not _partials(tmp_path)


def test_bench_overwrite_never_deletes_its_inputs(exported, sample_dir, tmp_path, capsys):
    before_artifacts, before_data = _snapshot(exported), _snapshot(sample_dir)
    base = ["bench", str(exported / ONNX), "--data", str(sample_dir), "--runs", "1", "--warmup", "0",
            "--batch-sizes", "1", "--overwrite"]
    for out in (exported, sample_dir, sample_dir / "ants"):
        assert main([*base, "--out", str(out)]) == 2
        assert "input of this command" in _one_line_error(capsys)
    assert main([*base[:2], "--data", str(sample_dir), "--out", str(exported / ONNX), "--overwrite"]) == 2
    assert "existing file" in _one_line_error(capsys)
    assert _snapshot(exported) == before_artifacts and _snapshot(sample_dir) == before_data


# -- 2. every file of an artifact is hashed and verified ---------------------------------------------
def _copy_artifacts(exported: Path, dst: Path) -> Path:
    dst.mkdir()
    for path in exported.iterdir():
        if path.name.startswith("model_"):
            (dst / path.name).write_bytes(path.read_bytes())
    return dst


def test_sidecar_hashes_every_file(exported):
    side = read_json(sidecar_path(exported / XML))
    assert side["files"] == {XML: sha256_file(exported / XML),
                             "model_openvino_fp32.bin": sha256_file(exported / "model_openvino_fp32.bin")}
    assert side["sha256"] == side["files"][XML]
    assert read_json(sidecar_path(exported / ONNX))["files"] == {ONNX: sha256_file(exported / ONNX)}


def test_zeroed_openvino_weights_fail_load_predict_and_bench(exported, sample_dir, tmp_path, capsys):
    from edgetl.runtime import EdgeModel

    copy = _copy_artifacts(exported, tmp_path / "copy")
    weights = copy / "model_openvino_fp32.bin"
    size = weights.stat().st_size
    with open(weights, "r+b") as handle:  # 4 MB of zeros in the middle of the weights
        handle.seek(size // 4)
        handle.write(bytes(min(4 << 20, size // 2)))
    image = str(next((sample_dir / "ants").iterdir()))
    with pytest.raises(CheckFailed, match=r"model_openvino_fp32\.bin does not match the sha256"):
        EdgeModel.load(copy / XML)
    assert main(["predict", str(copy / XML), image]) == 1
    assert "model_openvino_fp32.bin does not match the sha256" in _one_line_error(capsys)
    assert main(["bench", str(copy / XML), "--data", str(sample_dir), "--out", str(tmp_path / "b"),
                 "--runs", "1", "--warmup", "0", "--batch-sizes", "1"]) == 1
    assert "model_openvino_fp32.bin does not match" in _one_line_error(capsys)
    assert not (tmp_path / "b").exists()
    service = subprocess.run([sys.executable, str(REPO / "examples" / "http_service.py"), str(copy / XML),
                              "--port", "0"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert service.returncode == 1 and "model_openvino_fp32.bin does not match" in service.stderr
    assert "listening" not in service.stdout
    # The fast path that skips verification is explicit, and then the damage is not noticed.
    assert len(EdgeModel.load(copy / XML, verify=False).predict(image, top_k=1)) == 1
    assert main(["predict", str(copy / XML), image, "--no-verify"]) == 0
    capsys.readouterr()


def test_old_sidecars_without_file_hashes_still_load_and_check_the_main_file(exported, tmp_path):
    from edgetl.runtime import EdgeModel

    copy = _copy_artifacts(exported, tmp_path / "old")
    side = read_json(sidecar_path(copy / XML))
    write_json(sidecar_path(copy / XML), {**side, "files": list(side["files"])})  # the old list form
    assert EdgeModel.load(copy / XML).labels == side["labels"]
    (copy / XML).write_text((copy / XML).read_text().replace("<", " <", 1))
    with pytest.raises(CheckFailed, match="does not match the sha256"):
        verify_artifact(copy / XML)


# -- 3. `edgetl run` reuses only intact stages --------------------------------------------------------
@pytest.mark.slow
def test_run_redoes_a_stage_whose_outputs_are_gone_or_damaged(sample_dir, tmp_path, capsys):
    out = tmp_path / "run"  # the session's 60-photo sample, not the whole embedded one: three runs stay short
    args = ["run", str(sample_dir), "--out", str(out), "--backbone", "mobilenet_v3_small", "--weights", "none",
            "--input-size", "32", "--epochs", "1", "--runs", "1", "--formats", "onnx", "--quantize", "none"]
    assert main(args) == 0
    capsys.readouterr()
    recorded = read_json(out / "export" / "stage.json")["outputs"]
    assert recorded[ONNX] == sha256_file(out / "export" / ONNX)
    (out / "export" / ONNX).unlink()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"== export: inputs unchanged but {ONNX} is missing; redoing it" in err
    assert "== finetune: inputs unchanged, reusing" in err and (out / "export" / ONNX).is_file()
    model = out / "model" / "model.keras"
    model.write_bytes(model.read_bytes()[:1000])
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "== finetune: inputs unchanged but model.keras changed since it was written; redoing it" in err
    assert "reusing" in err.split("== finetune")[0]  # the splits stay reused
    assert model.stat().st_size > 1000 and "== export: inputs changed" in err


def test_run_refuses_an_unrelated_folder(tmp_path, capsys):
    out = tmp_path / "project"
    (out / "data").mkdir(parents=True)
    (out / "data" / "photo.jpg").write_bytes(b"mine")
    assert main(["run", "--out", str(out), "--backbone", "mobilenet_v3_small", "--weights", "none"]) == 2
    assert "not written by edgetl" in _one_line_error(capsys)
    assert (out / "data" / "photo.jpg").read_bytes() == b"mine"


# -- 13. signals and what dead processes leave behind -------------------------------------------------
def _start_export(model: Path, out: Path, check: Path, **env_vars: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **env_vars}
    return subprocess.Popen([sys.executable, "-m", "edgetl", "export", str(model), "--out", str(out),
                             "-f", "onnx,tflite", "--check", str(check)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _when_partial_appears(process: subprocess.Popen, parent: Path, timeout: float = 120,
                          holding: str | None = None) -> str:
    """The name of the first ``.partial`` folder in ``parent`` (with ``holding``: once that path inside
    it is a non-empty folder)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        found = [p.name for p in parent.iterdir() if p.name.endswith(".partial")
                 and (holding is None or any(p.joinpath(holding).glob("*")))]
        if found:
            return found[0]
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"no partial folder appeared: {process.communicate()}")


def test_sigkill_leftovers_are_removed_and_sigterm_cleans_up(tiny_model_dir, sample_dir, tmp_path):
    parent = tmp_path / "exports"
    parent.mkdir()
    out = parent / "artifacts"
    temp = tmp_path / "tmp"  # the process's TMPDIR: converters' scratch must not land (and leak) there
    temp.mkdir()
    killed = _start_export(tiny_model_dir, out, sample_dir, TMPDIR=str(temp))
    # killed while converting: the export's and the converters' intermediates are in its scratch folder
    partial = _when_partial_appears(killed, parent, holding=SCRATCH_DIR)
    assert f".artifacts.{killed.pid}." in partial  # the owner's pid is in the name
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert _partials(parent) == [partial] and not out.exists()  # what SIGKILL leaves
    # (a runtime's telemetry keeps a small session file, .ses, in TMPDIR: files are not scratch folders)
    assert any((parent / partial / SCRATCH_DIR).iterdir()) and [p for p in temp.iterdir() if p.is_dir()] == []

    terminated = _start_export(tiny_model_dir, out, sample_dir)
    own = _when_partial_appears(terminated, parent)
    while partial in _partials(parent):  # the next writer to this parent removes the dead one's partial
        assert terminated.poll() is None
        time.sleep(0.05)
    terminated.send_signal(signal.SIGTERM)
    _, err = terminated.communicate(timeout=120)
    assert terminated.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == "edgetl: terminated (SIGTERM); nothing half-written was left"
    assert "Traceback" not in err and own not in _partials(parent)
    assert _partials(parent) == [] and not out.exists()


def test_only_edgetl_partials_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host_marker = {"schema": "edgetl.output/1", "verb": "export", "pid": dead.pid}
    import socket

    def make(name: str, marker: dict | None, extra: bool = False) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        if marker is not None:
            write_json(folder / OUTPUT_MARKER, marker)
        if extra:
            (folder / "data.bin").write_bytes(b"x")
        return folder

    stale = make(f".out.{dead.pid}.abcd1234.partial", {**host_marker, "host": socket.gethostname()}, True)
    empty = make(f".out.{dead.pid}.efgh5678.partial", None)
    alive = make(f".out.{os.getppid()}.ijkl9012.partial", {**host_marker, "host": socket.gethostname()}, True)
    other_host = make(f".out.{dead.pid}.mnop3456.partial", {**host_marker, "host": "elsewhere"}, True)
    not_ours = make(f".out.{dead.pid}.qrst7890.partial", None, True)
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([stale, empty])
    assert alive.exists() and other_host.exists() and not_ours.exists()


# -- 14. concurrent writers ---------------------------------------------------------------------------
WRITER = """
import os, sys
from edgetl.metadata import atomic_directory
errors = 0
for i in range(int(sys.argv[2])):
    try:
        with atomic_directory(sys.argv[1], overwrite=True) as tmp:
            (tmp / "a.txt").write_text(f"{os.getpid()} {i}")
            (tmp / "b.txt").write_text(f"{os.getpid()} {i}")
    except Exception as exc:
        errors += 1
        print(type(exc).__name__, exc, file=sys.stderr)
print(errors)
"""


def test_two_processes_write_one_target_300_times(tmp_path):
    target = tmp_path / "target"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(target), "300"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    missing = seen = 0
    while any(w.poll() is None for w in writers):  # a path lookup always finds a complete folder
        try:
            os.listdir(target)
            seen = 1
        except FileNotFoundError:
            missing += seen
    results = [w.communicate(timeout=120) for w in writers]
    assert [(w.returncode, out.strip()) for w, (out, _) in zip(writers, results)] == [(0, "0"), (0, "0")], results
    assert missing == 0
    a, b = (target / "a.txt").read_text(), (target / "b.txt").read_text()
    assert a == b and a.split()[1] == "299"  # complete, and the last write of one of the writers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]  # no temp or old folder left
