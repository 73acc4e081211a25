"""Hostile input, round two (issue 27): every sidecar field validated once (``metadata.validate``) with one
line naming the file and the field, in predict, the runtime and the bench; the Python API's inputs
checked with ``UsageError``; NPU-compiled artifacts on a CPU; NaN and infinities in numeric options.
Everything reuses conftest's small-CNN artifacts: no training, no export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgetl.cli import main
from edgetl.errors import UsageError
from edgetl.metadata import read_json, sidecar_path, write_json
from checks import one_line


def _copy(artifact: Path, dst: Path, name: str | None = None) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    target = dst / (name or artifact.name)
    shutil.copy(artifact, target)
    sidecar = read_json(sidecar_path(artifact))
    if name:  # a renamed copy: its sidecar names it (the hashes stay those of the same bytes)
        digest = sidecar["files"].pop(artifact.name)
        sidecar.update(file=name, files={name: digest})
    write_json(sidecar_path(target), sidecar)
    return target


def _edit(artifact: Path, change) -> Path:
    sidecar = read_json(sidecar_path(artifact))
    change(sidecar)
    write_json(sidecar_path(artifact), sidecar)
    return artifact


def _set(path: str, value):
    def change(sidecar):
        *parents, last = path.split(".")
        node = sidecar
        for key in parents:
            node = node[key]
        node[last] = value
    return change


# (field path, bad value, what the one line must say): the probe's 10 predict cases and the rest of the fields
BAD_FIELDS = [
    ("preprocessing.mean", "abc", "field 'preprocessing.mean' must be a list of 1 or 3 finite numbers, got 'abc'"),
    ("preprocessing.mean", None, "field 'preprocessing.mean' must be a list of 1 or 3 finite numbers, got None"),
    ("preprocessing.mean", [1.0, 2.0], "field 'preprocessing.mean' must be a list of 1 or 3 finite numbers"),
    ("preprocessing.mean", {"r": 1}, "field 'preprocessing.mean' must be a list of 1 or 3"),
    ("preprocessing.std", ["1", "2", "3"], "field 'preprocessing.std' must be a list of 1 or 3 finite numbers"),
    ("preprocessing.std", None, "field 'preprocessing.std' must be a list of 1 or 3"),
    ("preprocessing.std", [128.0, 128.0], "field 'preprocessing.std' must be a list of 1 or 3"),
    ("preprocessing.std", {"g": 2}, "field 'preprocessing.std' must be a list of 1 or 3"),
    ("preprocessing.std", [0, 0, 0], "field 'preprocessing.std' must be > 0 (it divides the pixels)"),
    ("preprocessing.interpolation", "sinc9000", "field 'preprocessing.interpolation' is 'sinc9000'; expected one of"),
    ("preprocessing.input_size", [96], "field 'preprocessing.input_size' must be [height, width]"),
    ("preprocessing.resize_shorter", -5, "field 'preprocessing.resize_shorter' must be a positive integer or null"),
    ("preprocessing.channel_order", "GBR", "field 'preprocessing.channel_order' is 'GBR'"),
    ("preprocessing.decode", {"max_pixels": "many"}, "field 'preprocessing.decode' is invalid"),
    ("labels", ["ants", "bee\ns"], "field 'labels[1]' holds a control character or line break"),
    ("labels", ["ants", ""], "field 'labels[1]' must be a non-empty string"),
    ("labels", ["ants", "ants"], "field 'labels' names 'ants' twice"),
    ("labels", "ants,bees", "field 'labels' is invalid (a non-empty list of class names)"),
    ("input.dtype", "float64x", "field 'input.dtype' is 'float64x'"),
    ("input.shape", [1, 96, 96], "field 'input.shape' must be 4 positive integers"),
    ("input.layout", "HWCN", "field 'input.layout' is 'HWCN'"),
    ("input.quantization", {"scale": -1, "zero_point": 0}, "field 'input.quantization.scale' must be a finite number > 0"),
    ("output.kind", "scores", "field 'output.kind' is 'scores'"),
    ("sha256", "xyz", "field 'sha256' must be 64 lowercase hex digits"),
    ("size_bytes", -1, "field 'size_bytes' must be a non-negative integer"),
    ("quantization", [], "field 'quantization' must be an object"),
]


@pytest.fixture(scope="module")
def onnx_copy(cnn_artifacts, tmp_path_factory) -> Path:
    return _copy(cnn_artifacts.paths["onnx"], tmp_path_factory.mktemp("fields"))


@pytest.mark.parametrize("field,value,message", BAD_FIELDS, ids=[f"{f}={v!r}"[:40] for f, v, _ in BAD_FIELDS])
def test_predict_names_the_file_and_the_bad_field(field, value, message, onnx_copy, cnn_artifacts, tmp_path, capsys):
    artifact = _edit(_copy(onnx_copy, tmp_path), _set(field, value))
    assert main(["predict", str(artifact), str(cnn_artifacts.images[0])]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"edgetl: error: {sidecar_path(artifact)}: ") and message in err, err


def test_valid_variants_of_the_recipe_still_run(onnx_copy, cnn_artifacts, tmp_path):
    """One number for mean/std (broadcast over the channels) reads like three equal ones."""
    from edgetl.runtime import EdgeModel

    reference = EdgeModel.load(onnx_copy).probabilities(cnn_artifacts.images[:2])
    recipe = read_json(sidecar_path(onnx_copy))["preprocessing"]
    assert len(set(recipe["mean"])) == 1 and len(set(recipe["std"])) == 1  # this CNN's recipe: one value per channel
    single = _edit(_copy(onnx_copy, tmp_path), lambda s: s["preprocessing"].update(mean=recipe["mean"][:1],
                                                                                    std=recipe["std"][:1]))
    assert np.array_equal(EdgeModel.load(single).probabilities(cnn_artifacts.images[:2]), reference)


def test_labels_with_control_characters_are_refused_in_a_model_card(runtime_model_dir, tmp_path, capsys):
    """edgetl.json feeds every format's labels file (TFLite labels.txt, OpenVINO/ONNX model_info): a label
    with a line break would shift every later class, so export refuses it before TensorFlow loads."""
    model = tmp_path / "model"
    shutil.copytree(runtime_model_dir, model)
    card = read_json(model / "edgetl.json")
    card["labels"] = [card["labels"][0], "bees\u2028extra"]
    write_json(model / "edgetl.json", card)
    assert main(["export", str(model), "--out", str(tmp_path / "out")]) == 2
    err = one_line(capsys.readouterr().err)
    assert f"{model / 'edgetl.json'}: field 'labels[1]' holds a control character or line break" in err
    assert not (tmp_path / "out").exists()


def test_bench_lists_a_bad_sidecar_as_failed_and_benches_the_others(cnn_artifacts, sample_subset, tmp_path, capsys):
    """The probe's lost bench: one sidecar with mean "abc" among several artifacts. That artifact is a
    failed row with its one line; the others are benched and bench.json is written (exit 1 at the end)."""
    arts = tmp_path / "arts"
    good = _copy(cnn_artifacts.paths["tflite_uint8"], arts)
    bad = _edit(_copy(cnn_artifacts.paths["onnx_uint8"], arts), _set("preprocessing.mean", "abc"))
    out = tmp_path / "report"
    code = main(["bench", str(arts), "--data", str(sample_subset(2)), "--out", str(out), "--runs", "2",
                 "--warmup", "0", "--batch-sizes", "1", "--no-overhead-check"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and not any("Traceback" in line for line in err)
    report = json.loads((out / "bench.json").read_text())
    assert [a["name"] for a in report["artifacts"]] == [good.name]
    assert [(f["name"], f["reason"]) for f in report["failed"]] == [
        (bad.name, f"{sidecar_path(bad)}: field 'preprocessing.mean' must be a list of 1 or 3 finite numbers, "
                   f"got 'abc'")]


def _npu_compiled(artifact: Path, dst: Path) -> Path:
    """A copy of a LiteRT artifact whose sidecar says what export --target npu:ethos-u55-256 writes for its
    Vela-compiled model (``target.cpu_runnable`` false, the uncompiled model named)."""
    copy = _copy(artifact, dst, "model_int8_vela.tflite")
    return _edit(copy, lambda s: s.update(target={
        "name": "npu:ethos-u55-256", "kind": "npu", "compiled_by": "Vela 5.2.0", "cpu_runnable": False,
        "uncompiled": "model_int8.tflite", "role": "Vela-compiled model (one ethos-u custom op)"}))


def test_npu_compiled_artifacts_say_so_on_a_cpu(cnn_artifacts, sample_subset, tmp_path, capsys):
    from edgetl.runtime import EdgeModel

    arts = tmp_path / "arts"
    compiled = _npu_compiled(cnn_artifacts.paths["tflite_uint8"], arts)
    why = ("model_int8_vela.tflite is compiled for npu:ethos-u55-256 (Vela 5.2.0) and runs only there, not on "
           "a CPU: its uncompiled model model_int8.tflite runs on a CPU; `edgetl bench --target "
           "npu:ethos-u55-256 --simulate` estimates it")
    with pytest.raises(UsageError) as raised:  # the runtime
        EdgeModel.load(compiled)
    assert str(raised.value) == why
    assert main(["predict", str(compiled), str(cnn_artifacts.images[0])]) == 2  # predict
    assert one_line(capsys.readouterr().err) == f"edgetl: error: {why}"
    data = sample_subset(2)
    alone = tmp_path / "alone"  # bench of that artifact alone: the same line, nothing written
    assert main(["bench", str(compiled), "--data", str(data), "--out", str(alone)]) == 2
    assert one_line(capsys.readouterr().err) == f"edgetl: error: {why}" and not alone.exists()
    plain = _copy(cnn_artifacts.paths["tflite_uint8"], arts)  # beside a CPU artifact: listed as not benched
    out = tmp_path / "report"
    assert main(["bench", str(arts), "--data", str(data), "--out", str(out), "--runs", "2", "--warmup", "0",
                 "--batch-sizes", "1", "--no-overhead-check"]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert [a["name"] for a in report["artifacts"]] == [plain.name] and report["failed"] == []
    assert report["not_benched"] == [{"path": str(compiled.resolve()), "name": compiled.name, "format": "tflite",
                                      "reason": why}]
    assert f"- **{compiled.name}** (tflite): not run here: {why}" in (out / "report.md").read_text()


def test_python_api_inputs_raise_usage_error(cnn_artifacts):
    from edgetl.runtime import EdgeModel

    path = cnn_artifacts.paths["onnx"]
    for kwargs, message in (({"artifact": 3}, "EdgeModel.load takes the artifact's path"),
                            ({"artifact": ""}, "EdgeModel.load takes the artifact's path"),
                            ({"artifact": path, "threads": 0}, "threads must be a positive integer"),
                            ({"artifact": path, "threads": 1.5}, "threads must be a positive integer"),
                            ({"artifact": path, "device": None}, "device must be cpu, gpu or npu"),
                            ({"artifact": path, "device": "tpu"}, "unknown device 'tpu'"),
                            ({"artifact": path, "verify": "yes"}, "verify must be True or False")):
        with pytest.raises(UsageError, match=message):
            EdgeModel.load(**kwargs)
    model = EdgeModel.load(path)
    image = np.full((40, 50, 3), 0.5, np.float32)
    for images, message in (([], "no images given"),
                            (np.zeros((0, 96, 96, 3), np.uint8), "no images given"),
                            (np.zeros((0, 0, 3), np.uint8), "an image array is empty"),
                            (np.where(np.arange(3) == 1, np.nan, image), "holds NaN or infinite values"),
                            (np.full((40, 50, 3), np.inf, np.float32), "holds NaN or infinite values"),
                            (np.zeros((40, 50, 3), bool), "must hold integers or floats, got dtype bool"),
                            (np.zeros((40, 50, 3), complex), "must hold integers or floats"),
                            (np.zeros((40, 50, 5), np.uint8), "HxW or HxWx1/3/4, got shape (40, 50, 5)"),
                            ([np.zeros((2, 40, 50, 3, 1), np.uint8)], "HxW or HxWx1/3/4")):
        with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
            model.predict(images)
    for top_k in (0, -1, 2.5, True, "3"):
        with pytest.raises(UsageError, match="top_k must be a positive integer"):
            model.predict(image, top_k=top_k)
    with pytest.raises(UsageError, match="batch_size must be a positive integer"):
        model.predict_batch([image], batch_size=0)
    batch = model.prepare([image])
    assert batch.dtype == np.float32 and model.run(batch).shape == (1, len(model.labels))
    for bad, message in ((batch.tolist(), "run takes a numpy array"), (batch[0], "non-empty N x H x W x C"),
                         (batch[:0], "non-empty N x H x W x C"), (batch.astype(np.float64), "takes float32 input"),
                         (batch[:, :48], "takes (96, 96, 3) images, got (48, 96, 3)"),
                         (np.full_like(batch, np.nan), "NaN or infinite")):
        with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
            model.run(bad)
    # what stays accepted: integer and float arrays in range, greyscale, RGBA
    for ok in (image, np.zeros((40, 50), np.uint8), np.zeros((40, 50, 4), np.uint8), np.zeros((40, 50, 3), np.int64)):
        assert len(model.predict(ok, top_k=1)) == 1


@pytest.mark.parametrize("args", [
    ["finetune", "DATA", "--out", "OUT", "--lr", "nan"],
    ["finetune", "DATA", "--out", "OUT", "--dropout", "inf"],
    ["finetune", "DATA", "--out", "OUT", "--val-split", "-inf"],
    ["export", "MODEL", "--out", "OUT", "--min-agreement", "NaN"],
    ["prune", "MODEL", "--out", "OUT", "--sparsity", "nan"],
    ["prune", "MODEL", "--out", "OUT", "--sweep", "0.5,inf"],
    ["search", "DATA", "--out", "OUT", "--max-latency-ms", "nan"],
    ["search", "DATA", "--out", "OUT", "--sparsity", "0,nan"],
])
def test_numeric_options_refuse_nan_and_infinities(args, sample_subset, runtime_model_dir, tmp_path, capsys):
    paths = {"DATA": str(sample_subset(2)), "MODEL": str(runtime_model_dir), "OUT": str(tmp_path / "out")}
    assert main([paths.get(a, a) for a in args]) == 2
    err = one_line(capsys.readouterr().err)
    flag, value = args[-2], args[-1].split(",")[-1]
    assert flag in err and "finite number" in err and value.lower() in err.lower(), err
    assert not (tmp_path / "out").exists()


def test_embedded_metadata_is_validated_like_a_sidecar(cnn_artifacts, tmp_path):
    """An artifact that travelled without its sidecar is described by what export embedded in it (ONNX
    metadata_props here): the same field checks, the line naming the artifact's embedded metadata."""
    import onnx

    from edgetl.runtime import EdgeModel

    source = cnn_artifacts.paths["onnx"]
    model = onnx.load(str(source))
    prop = next(p for p in model.metadata_props if p.key == "edgetl")
    described = json.loads(prop.value)
    assert described["preprocessing"]["std"]  # the real description passes as written
    described["preprocessing"]["std"] = [0.0]
    prop.value = json.dumps(described)
    alone = tmp_path / "model.onnx"
    onnx.save(model, str(alone))
    with pytest.raises(UsageError) as raised:
        EdgeModel.load(alone)
    assert str(raised.value) == (f"{alone} (its embedded metadata): field 'preprocessing.std' must be > 0 (it "
                                 f"divides the pixels), got [0.0]")
    shutil.copy(source, tmp_path / "intact.onnx")  # untouched, it loads and runs without a sidecar
    assert len(EdgeModel.load(tmp_path / "intact.onnx").predict(cnn_artifacts.images[0], top_k=1)) == 1
