"""Hostile-but-realistic inputs (issue 12, items 6-12 and 15): each fails with one line and the right
exit code before any work, or is handled: unwritable --out, broken edgetl.json, finetune argument
ranges, --out ., misleading messages, client-visible artifact names, parity ties, bench bounds and
partial failure."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetl.cli import main
from checks import one_line

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "edgetl" / "schemas" / "bench.schema.json"


@pytest.fixture(scope="module")
def small_data(sample_subset) -> Path:
    """2 images per class: enough for every check here, and fast."""
    return sample_subset(2)


@pytest.fixture(scope="module")
def u8_artifacts(cnn_artifacts, artifact_subset) -> Path:
    """FP32 uint8-input ONNX, TFLite and OpenVINO artifacts of the small CNN (copies of conftest's export):
    what is checked here is edgetl's handling of them, not the model."""
    paths = [cnn_artifacts.paths[f"{fmt}_uint8"] for fmt in ("onnx", "tflite", "openvino")]
    return artifact_subset("hardening", {paths[0].parent: [p.name for p in paths]})


# -- 6. unwritable --out -------------------------------------------------------------------------------
def _unprivileged() -> list[str]:
    """A prefix that runs a command without the right to write where file modes forbid it: as root,
    setpriv drops the capabilities that override file modes; others are bound by the modes already."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot drop CAP_DAC_OVERRIDE")
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


@pytest.mark.parametrize("verb", ["finetune", "export", "prune", "bench"])
def test_unwritable_out_is_one_line_before_any_work(verb, tiny_model_dir, u8_artifacts, small_data, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    out = locked / "out"
    args = {"finetune": ["finetune", str(small_data), "--out", str(out), "--epochs", "1"],
            "export": ["export", str(tiny_model_dir), "--out", str(out)],
            "prune": ["prune", str(tiny_model_dir), "--out", str(out), "--epochs", "0"],
            "bench": ["bench", str(u8_artifacts), "--data", str(small_data), "--out", str(out)]}[verb]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run([*_unprivileged(), sys.executable, "-m", "edgetl", *args], env=env,
                              capture_output=True, text=True, timeout=120)
    finally:
        locked.chmod(0o755)
    assert done.returncode == 2, done.stderr
    err = one_line(done.stderr)
    assert f"--out {out} cannot be written: {locked}: Permission denied" in err
    assert not out.exists()


def test_os_error_mid_write_isone_line(small_data, tmp_path, capfd):
    """A file-size limit (EFBIG; ENOSPC and EACCES take the same path) hit while model.keras is
    written after training: one line, exit 2, nothing left at --out."""
    from edgetl.writable import describe_os_error

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))  # the model file is ~14 MB
    try:
        code = main(["finetune", str(small_data), "--out", str(tmp_path / "model"), "--backbone",
                     "efficientnet_lite0", "--weights", "none", "--input-size", "32", "--epochs", "1",
                     "--val-split", "0.5"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == "edgetl: error: File too large (a file-size limit, ulimit -f)"
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "model").exists() and not list(tmp_path.glob(".model.*"))
    # Not the machine's state: stays a bug with its traceback.
    assert describe_os_error(FileNotFoundError(2, "No such file or directory", "x")) is None


# -- 7. edgetl.json -----------------------------------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    ("{not json", "edgetl.json: not valid JSON (Expecting property name"),
    ("{}", "edgetl.json: field 'labels' is missing"),
    ('["ants"]', "edgetl.json: expected a JSON object, got list"),
    ('{"labels": ["ants", "bees"]}', "edgetl.json: field 'preprocessing' is missing or invalid"),
    ('{"labels": ["ants", "bees"], "preprocessing": {"input_size": [96]}}',
     "edgetl.json: field 'preprocessing.input_size' is missing or invalid"),
    ('{"labels": "ants", "preprocessing": {"input_size": [96, 96]}}', "edgetl.json: field 'labels' is invalid"),
])
def test_broken_model_metadata_names_file_and_field(content, message, tiny_model_copy, u8_artifacts, small_data,
                                                    tmp_path, capsys):
    (tiny_model_copy / "edgetl.json").write_text(content)
    for args in (["export", str(tiny_model_copy), "--out", str(tmp_path / "e")],
                 ["prune", str(tiny_model_copy), "--out", str(tmp_path / "p"), "--epochs", "0"],
                 ["bench", str(u8_artifacts), "--data", str(small_data), "--out", str(tmp_path / "b"),
                  "--reference", str(tiny_model_copy)]):
        assert main(args) == 2, args
        err = one_line(capsys.readouterr().err)
        assert message in err and str(tiny_model_copy / "edgetl.json") in err
    assert not any((tmp_path / name).exists() for name in "epb")


def test_prune_without_training_data_record_asks_for_data(tiny_model_copy, tmp_path, capsys):
    meta = json.loads((tiny_model_copy / "edgetl.json").read_text())
    del meta["dataset"]
    (tiny_model_copy / "edgetl.json").write_text(json.dumps(meta))
    assert main(["prune", str(tiny_model_copy), "--out", str(tmp_path / "p"), "--epochs", "0"]) == 2
    assert "records no training data (dataset.root); pass --data" in one_line(capsys.readouterr().err)


# -- 8. finetune arguments ------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--dropout", "1.5"], "--dropout must be in [0, 1), got 1.5"),
    (["--dropout", "-0.1"], "--dropout must be in [0, 1)"),
    (["--input-size", "8"], "--input-size must be >= 32 for efficientnet_lite0, got 8"),
    (["--input-size", "-5"], "--input-size must be >= 32 for efficientnet_lite0, got -5"),
    (["--input-size", "0"], "--input-size must be >= 32 for efficientnet_lite0, got 0"),
    (["--backbone", "inception_v3", "--input-size", "64"], "--input-size must be >= 75 for inception_v3"),
    (["--val-split", "0"], "--val-split must be between 0 and 1 (exclusive), got 0.0"),
    (["--val-split", "1"], "--val-split must be between 0 and 1"),
    (["--epochs", "0"], "epochs and batch size must be >= 1 and the learning rate > 0"),
    (["--batch-size", "0"], "epochs and batch size must be >= 1"),
    (["--lr", "0"], "the learning rate > 0"),
    (["--lr", "-1"], "the learning rate > 0"),
    (["--strategy", "freeze", "--fine-tune-epochs", "0"], "--fine-tune-epochs must be >= 1"),
    (["--strategy", "full", "--fine-tune-lr", "-1"], "--fine-tune-lr must be > 0"),
])
def test_finetune_bad_arguments_fail_before_training(args, message, small_data, tmp_path, capsys):
    assert main(["finetune", str(small_data), "--out", str(tmp_path / "m"), *args]) == 2
    captured = capsys.readouterr()
    assert message in one_line(captured.err) and "epoch 1/" not in captured.err
    assert not (tmp_path / "m").exists()


def test_finetune_out_file_and_val_split_zero_with_a_pre_split_folder(small_data, tmp_path, capsys):
    from edgetl.training import FinetuneConfig

    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    assert main(["finetune", str(small_data), "--out", str(existing), "--epochs", "1"]) == 2
    assert f"--out {existing} is an existing file, not a folder" in one_line(capsys.readouterr().err)
    assert existing.read_text() == "keep me"
    # DATA/{train,val}: the split is the folder's, so --val-split 0 is fine (nothing to validate).
    split = tmp_path / "split"
    for part in ("train", "val"):
        shutil.copytree(small_data, split / part)
    FinetuneConfig(data=split, out=tmp_path / "m", val_split=0.0).validate()


# -- 9. export --out . ------------------------------------------------------------------------------------
@pytest.mark.parametrize("out", [".", ".."])
def test_export_out_current_directory_fails_up_front(out, tiny_model_dir, tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "work" / "here"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    assert main(["export", str(tiny_model_dir), "--out", out, "-f", "tflite"]) == 2
    err = one_line(capsys.readouterr().err)
    assert f"--out {out} is the current directory (or holds it)" in err and "--out ./edgetl-out" in err
    assert list(cwd.iterdir()) == [] and [p.name for p in cwd.parent.iterdir()] == ["here"]


# -- 10. messages that misled ----------------------------------------------------------------------------
def test_messages_name_the_real_problem(tiny_model_copy, u8_artifacts, small_data, tmp_path, capsys):
    (tiny_model_copy / "edgetl.json").rename(tmp_path / "saved.json")
    assert main(["prune", str(tiny_model_copy), "--out", str(tmp_path / "p")]) == 2
    err = one_line(capsys.readouterr().err)
    assert "no edgetl.json (not a model directory written by" in err and "--input-size" not in err

    (tmp_path / "saved.json").rename(tiny_model_copy / "edgetl.json")
    report = tmp_path / "report.txt"
    report.write_text("x")
    assert main(["bench", str(u8_artifacts), "--data", str(small_data), "--out", str(report)]) == 2
    err = one_line(capsys.readouterr().err)
    assert "is an existing file, not a folder" in err and "--overwrite" not in err

    keras_file = tiny_model_copy / "model.keras"
    keras_file.write_bytes(keras_file.read_bytes()[:100_000])  # truncated
    for args in (["export", str(tiny_model_copy), "--out", str(tmp_path / "e")],
                 ["prune", str(tiny_model_copy), "--out", str(tmp_path / "p"), "--epochs", "0"]):
        assert main(args) == 2
        err = one_line(capsys.readouterr().err)
        assert f"{keras_file}: not a valid Keras file (truncated, or not a .keras zip archive)" in err
        assert "File not found" not in err


# -- 11. names a client sees --------------------------------------------------------------------------------
def test_sidecar_names_are_what_each_client_api_takes(u8_artifacts, small_data):
    import onnxruntime as ort
    import openvino as ov
    from ai_edge_litert.interpreter import Interpreter

    from edgetl.data import load_pixels
    from edgetl.metadata import read_sidecar
    from edgetl.runtime.backends import open_backend

    onnx_path, tflite_path, xml_path = (u8_artifacts / f"model_{f}_fp32_u8{ext}" for f, ext in
                                        (("onnx", ".onnx"), ("tflite", ".tflite"), ("openvino", ".xml")))
    side = {p.suffix: read_sidecar(p) for p in (onnx_path, tflite_path, xml_path)}
    pixels = load_pixels(sorted(small_data.rglob("*.jpg"))[:2], _recipe(side[".onnx"]))
    expected = open_backend(onnx_path).run(pixels)

    lite = side[".tflite"]
    assert (lite["input"]["name"], lite["output"]["name"]) == ("image", "logits")
    assert lite["input"]["signature"] == lite["output"]["signature"] == "serving_default"
    interpreter = Interpreter(model_path=str(tflite_path))
    # logits for edgetl and its clients' signature runners; probabilities (TFLite Metadata's score output)
    assert interpreter.get_signature_list() == {"serving_default": {"inputs": ["image"],
                                                                    "outputs": ["logits", "probabilities"]}}
    runner = interpreter.get_signature_runner(lite["input"]["signature"])
    first = runner(**{lite["input"]["signature_key"]: pixels[:1]})[lite["output"]["signature_key"]]
    np.testing.assert_allclose(first, expected[:1], atol=1e-4)
    assert interpreter.get_input_details()[0]["name"] == lite["input"]["tensor_name"]
    assert interpreter.get_output_details()[lite["output"]["index"]]["name"] == lite["output"]["tensor_name"]

    # ONNX: behind a uint8 input tf2onnx named the output after the nested model; now "logits".
    onnx_side = side[".onnx"]
    assert (onnx_side["input"]["name"], onnx_side["output"]["name"]) == ("image", "logits")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = session.run([onnx_side["output"]["name"]], {onnx_side["input"]["name"]: pixels})[0]
    np.testing.assert_allclose(out, expected, atol=1e-5)

    ov_side = side[".xml"]
    assert (ov_side["input"]["name"], ov_side["output"]["name"]) == ("image", "logits")
    compiled = ov.Core().compile_model(str(xml_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled({ov_side["input"]["name"]: pixels})[ov_side["output"]["name"]]
    np.testing.assert_allclose(out, expected, atol=1e-4)


def _recipe(sidecar):
    from edgetl.preprocess import Preprocessing

    return Preprocessing.from_dict(sidecar["preprocessing"])


# -- 15. bench bounds and partial failure --------------------------------------------------------------------
def test_bench_caps_batches_bounds_the_overhead_check_and_reports_a_corrupt_artifact(
        u8_artifacts, small_data, tmp_path, capsys, monkeypatch):
    import jsonschema

    # benchmark_app beside the IR rows is test_profile's; here it would add 2 s of its own timing per IR row
    monkeypatch.setattr("edgetl.profile.benchmark_app_path", lambda: None)

    arts = tmp_path / "arts"
    shutil.copytree(u8_artifacts, arts)
    onnx_path = arts / "model_onnx_fp32_u8.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[5000:9000] = bytes(4000)  # same size, different content: the sidecar sha256 no longer matches
    onnx_path.write_bytes(bytes(data))
    out = tmp_path / "report"
    code = main(["bench", str(arts), "--data", str(small_data), "--out", str(out), "--runs", "3",
                 "--warmup", "0", "--batch-sizes", "1,512"])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 1 and not any("Traceback" in line for line in err)
    # On a CPU whose OpenVINO default is not f32 (bf16), the FP32 IR is benched twice (f32 and native).
    from edgetl.profile import native_precision

    native = native_precision()
    variants = [f"model_openvino_fp32_u8.xml [{native}]"] if native not in (None, "f32") else []
    assert err[-1].startswith(f"edgetl: error: 1 of {3 + len(variants)} artifact(s) could not be benched "
                              f"(model_onnx_fp32_u8.onnx: ")
    assert "sha256" in err[-1] and err[-1].endswith(f"the others are in {out}")
    report = json.loads((out / "bench.json").read_text())
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))
    assert [f["name"] for f in report["failed"]] == ["model_onnx_fp32_u8.onnx"]
    assert sorted(a["name"] for a in report["artifacts"]) == sorted(["model_openvino_fp32_u8.xml",
                                                                    "model_tflite_fp32_u8.tflite", *variants])
    # 512 > the 4 images: capped to 4 (warned), so no batch repeats the data 128 times.
    assert report["settings"]["batch_sizes"] == [1, 4]
    assert report["settings"]["batch_sizes_requested"] == [1, 512]
    assert {r["batch_size"] for r in report["rows"]} == {1, 4}
    # The overhead check runs 2 loops x 5 rounds x --runs, not x max(--runs, 30).
    assert report["harness_overhead"]["runs"] == 3 and report["harness_overhead"]["rounds"] == 5
    markdown = (out / "report.md").read_text()
    assert "## Not benched" in markdown and "**model_onnx_fp32_u8.onnx** (onnx): FAILED:" in markdown
    assert "## model_tflite_fp32_u8.tflite" in captured.out  # the others' report still prints

    again = tmp_path / "again"
    assert main(["bench", str(arts / "model_tflite_fp32_u8.tflite"), "--data", str(small_data), "--out",
                 str(again), "--runs", "2", "--warmup", "0", "--batch-sizes", "1", "--no-overhead-check"]) == 0
    report = json.loads((again / "bench.json").read_text())
    assert report["harness_overhead"] is None and report["failed"] == []


def _fails_beyond_batch_one(src: Path, dst: Path) -> Path:
    """A copy of an ONNX artifact that loads and runs one image, but whose last op (a Reshape to a fixed
    [1, classes]) fails on any larger batch; its sidecar rewritten to match the new file."""
    import onnx
    from onnx import helper, numpy_helper

    from edgetl.metadata import read_sidecar, sha256_file, sidecar_path, write_json

    model = onnx.load(str(src))
    graph = model.graph
    graph_output = graph.output[0]
    classes = graph_output.type.tensor_type.shape.dim[-1].dim_value
    for node in graph.node:  # the producer of the output now feeds the Reshape
        node.output[:] = [f"{name}_pre" if name == graph_output.name else name for name in node.output]
    graph.initializer.append(numpy_helper.from_array(np.array([1, classes], np.int64), "fixed_shape"))
    graph.node.append(helper.make_node("Reshape", [f"{graph_output.name}_pre", "fixed_shape"], [graph_output.name]))
    onnx.save(model, str(dst))
    digest = sha256_file(dst)
    write_json(sidecar_path(dst), {**read_sidecar(src), "file": dst.name, "sha256": digest,
                                   "files": {dst.name: digest}, "size_bytes": dst.stat().st_size})
    return dst


def test_bench_reports_unusable_sidecars_and_runtime_failures_per_artifact(u8_artifacts, small_data, tmp_path,
                                                                          capsys):
    """One unreadable sidecar, one without its labels and one ONNX model that fails while running do not
    stop the bench: the good artifact is benched and written, each bad one is a failed row with its one
    line, the run exits 1 at the end naming all three."""
    import jsonschema

    from edgetl.errors import CheckFailed
    from edgetl.metadata import read_sidecar, sidecar_path, write_json
    from edgetl.runtime.backends import open_backend

    arts = tmp_path / "arts"
    arts.mkdir()
    onnx_path, tflite = u8_artifacts / "model_onnx_fp32_u8.onnx", u8_artifacts / "model_tflite_fp32_u8.tflite"
    for src in (tflite, sidecar_path(tflite)):
        shutil.copy(src, arts / src.name)
    for name, sidecar in (("a_unreadable.onnx", '{"schema": "edgetl.artifact/1", "labels": [ '),
                          ("b_no_labels.onnx", {k: v for k, v in read_sidecar(onnx_path).items() if k != "labels"})):
        shutil.copy(onnx_path, arts / name)
        if isinstance(sidecar, str):
            sidecar_path(arts / name).write_text(sidecar)
        else:
            write_json(sidecar_path(arts / name), sidecar)
    failing = _fails_beyond_batch_one(onnx_path, arts / "c_fails_running.onnx")
    batch = np.zeros((2, *read_sidecar(failing)["input"]["shape"][1:]), np.uint8)
    assert open_backend(failing).run(batch[:1]).shape == (1, 2)
    with pytest.raises(CheckFailed, match=r"c_fails_running.onnx: onnxruntime failed while running it on a "
                                          r"2x96x96x3 batch \(\[ONNXRuntimeError\]"):
        open_backend(failing).run(batch)

    out = tmp_path / "report"
    code = main(["bench", str(arts), "--data", str(small_data), "--out", str(out), "--runs", "2", "--warmup", "0",
                 "--batch-sizes", "1,2", "--no-overhead-check"])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 1 and not any("Traceback" in line for line in err)
    reasons = {
        "a_unreadable.onnx": f"{sidecar_path(arts / 'a_unreadable.onnx')}: unreadable metadata (",
        "b_no_labels.onnx": f"{sidecar_path(arts / 'b_no_labels.onnx')}: field 'labels' is missing",
        "c_fails_running.onnx": f"{failing}: onnxruntime failed while running it on a 2x96x96x3 batch",
    }
    assert err[-1].startswith("edgetl: error: 3 of 4 artifact(s) could not be benched (a_unreadable.onnx: ")
    assert err[-1].endswith(f"the others are in {out}") and all(r in err[-1] for r in reasons.values())
    report = json.loads((out / "bench.json").read_text())
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))
    assert [a["name"] for a in report["artifacts"]] == [tflite.name]
    assert {r["batch_size"] for r in report["rows"] if r["kind"] == "artifact"} == {1, 2}
    failed = {f["name"]: f for f in report["failed"]}
    assert sorted(failed) == sorted(reasons)
    for name, reason in reasons.items():
        assert failed[name]["reason"].startswith(reason) and failed[name]["format"] == "onnx"
        assert "\n" not in failed[name]["reason"]
    assert "quantization" not in failed["a_unreadable.onnx"]
    assert failed["c_fails_running.onnx"]["quantization"] == "none"
    markdown = (out / "report.md").read_text()
    assert "**b_no_labels.onnx** (onnx): FAILED:" in markdown and f"## {tflite.name}" in captured.out

    # Nothing usable at all: the same one line, exit 1, and nothing written.
    alone = tmp_path / "alone"
    assert main(["bench", str(arts / "a_unreadable.onnx"), "--data", str(small_data), "--out", str(alone)]) == 1
    assert reasons["a_unreadable.onnx"] in one_line(capsys.readouterr().err) and not alone.exists()


def test_embedded_description_is_read_by_each_formats_runtime_backend(cnn_artifacts, monkeypatch, tmp_path):
    """``runtime.embedded`` has no per-format branch: each format's runtime backend reads its own
    container, so a new format is its backend class and registry line only."""
    from edgetl.runtime import embedded
    from edgetl.runtime.backends import registry

    for fmt in ("onnx", "tflite", "openvino"):
        description = embedded.read_embedded(cnn_artifacts.paths[fmt])
        assert description["schema"] == embedded.EMBEDDED_SCHEMA and description["labels"] == cnn_artifacts.labels

    class JsonBackend(registry.BACKENDS["onnx"]):  # a made-up format whose file is the description itself
        format, suffix = "json-model", ".jsonmodel"

        @classmethod
        def embedded_text(cls, path):
            return Path(path).read_text()

    monkeypatch.setitem(registry.BACKENDS, JsonBackend.format, JsonBackend)
    monkeypatch.setitem(registry.FORMAT_BY_SUFFIX, JsonBackend.suffix, JsonBackend.format)
    made_up = tmp_path / "model.jsonmodel"
    made_up.write_text(json.dumps({"schema": embedded.EMBEDDED_SCHEMA, "labels": ["x", "y"]}))
    assert embedded.read_embedded(made_up)["labels"] == ["x", "y"]
    broken = tmp_path / "broken.xml"  # a damaged container reads as "no description", not a traceback
    broken.write_text("<net><rt_info")
    assert embedded.read_embedded(broken) is None and embedded.read_embedded(tmp_path / "model.bin") is None


def test_no_package_imports_another_packages_private_names():
    """Helpers shared across packages have public names in a module named for them (``edgetl.stages``,
    ``report.plots``); ``from ..pipeline import _stage`` and the like stay inside their package."""
    import ast

    root = REPO / "edgetl"
    crossing = []
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        package = parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                source = package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            elif (node.module or "").split(".")[0] == "edgetl":
                source = node.module.split(".")
            else:
                continue
            private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            if private and source[:2] != parts[:2]:  # edgetl.<package or module> differs
                crossing.append(f"{path.relative_to(REPO)}: {'.'.join(source)}.{', '.join(private)}")
    assert crossing == []
