"""Models edgetl did not train, down the same road: a PyTorch classifier exported to ONNX
(tests/data/torch_mnv2_ants_bees.onnx, made by tools/make_foreign_models.py) and a Keras model trained
here outside edgetl, each through export (ONNX, OpenVINO, TFLite; FP32 and INT8), predict and bench;
`search --model` of the ONNX file; and the bad inputs a foreign model brings (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
TORCH_ONNX = DATA / "torch_mnv2_ants_bees.onnx"
TORCH_REF = DATA / "torch_mnv2_ants_bees.npz"
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = [f"model_{fmt}_{mode}.{ext}" for fmt, ext in (("onnx", "onnx"), ("tflite", "tflite"), ("openvino", "xml"))
             for mode in ("fp32", "int8")]


def _cli(args, capsys) -> tuple[int, str, str]:
    from edgetl.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _export(model, out: Path, calib: Path, *flags) -> Path:
    from edgetl.cli import main

    code = main(["export", str(model), "-o", str(out), "-f", "onnx,tflite,openvino", "-q", "fp32,int8",
                 "--calib", str(calib), "--calib-size", "32", "--check", str(calib), "--labels", "ants,bees",
                 *map(str, flags)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def torch_export(sample_subset, tmp_path_factory) -> Path:
    if not TORCH_ONNX.exists():
        pytest.skip(f"{TORCH_ONNX} is missing; run tools/make_foreign_models.py")
    if not _importable("onnx2tf"):  # found, not imported: its import changes the process (edgetl undoes it)
        pytest.skip("TFLite from ONNX needs onnx2tf (pip install --no-deps onnx2tf)")
    limit = sys.getrecursionlimit()
    out = _export(TORCH_ONNX, tmp_path_factory.mktemp("torch") / "out", sample_subset(10), "--preprocess",
                  "torchvision")
    # onnx2tf sets the recursion limit to the C int maximum on import; with it, a deep recursion later in the
    # process (the hostile --space JSON of the hardening tests) overflowed the C stack and killed the worker.
    assert sys.getrecursionlimit() == limit
    return out


@pytest.fixture(scope="module")
def foreign_keras(sample_subset, tmp_path_factory) -> Path:
    """A Keras model trained here, not by edgetl: 32 px input in 0..1, a Dense head with no softmax."""
    import keras

    from edgetl.preprocess import Preprocessing

    data = sample_subset(10)
    recipe = Preprocessing(input_size=(32, 32), resize_shorter=None, interpolation="bilinear", mean=(0, 0, 0),
                           std=(255, 255, 255))
    paths = sorted(data.glob("*/*.jpg"))
    x = np.stack([recipe.prepare(p) for p in paths])
    y = np.asarray([p.parent.name == "bees" for p in paths], np.int64)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    h = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(h)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, outputs)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, verbose=0)
    folder = tmp_path_factory.mktemp("foreign_keras")
    model.save(folder / "mine.keras")
    np.save(folder / "keras_outputs.npy", model.predict(x, verbose=0))
    return folder / "mine.keras"


@pytest.fixture(scope="module")
def keras_export(foreign_keras, sample_subset, tmp_path_factory) -> Path:
    return _export(foreign_keras, tmp_path_factory.mktemp("keras") / "out", sample_subset(10), "--scale", "1/255",
                   "--resize", "0")


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _sidecar(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.json").read_text())


def test_torch_onnx_every_format_passes_parity_with_ort_fp32(torch_export):
    for name in ARTIFACTS:
        sidecar = _sidecar(torch_export, name)
        parity = sidecar["parity"]
        assert parity["passed"], (name, parity)
        assert sidecar["output"]["kind"] == "logits"
        assert sidecar["source_model"]["kind"] == "onnx"
        # ONNX and OpenVINO keep PyTorch's NCHW input; onnx2tf makes TFLite NHWC.
        layout = "NHWC" if name.endswith(".tflite") else "NCHW"
        assert sidecar["input"]["layout"] == sidecar["preprocessing"]["layout"] == layout
        assert sidecar["input"]["shape"][1:] == ([3, 64, 64] if layout == "NCHW" else [64, 64, 3])
        if "fp32" in name:
            assert parity["max_abs_diff"] < 1e-4 and parity["top1_agreement"] == 1.0, (name, parity)
        else:
            assert parity["top1_agreement"] >= 0.95, (name, parity)
    recipe = _sidecar(torch_export, ARTIFACTS[0])["preprocessing"]
    assert recipe["mean"] == pytest.approx([123.675, 116.28, 103.53]) and recipe["resize_shorter"] == 73


def test_torch_fp32_predictions_equal_pytorch_own(torch_export):
    """The runtime (resize, crop, normalise, NCHW transpose from the sidecar) on the photos the script
    saved gives PyTorch's own outputs, in every format's FP32 artifact."""
    from edgetl.runtime import EdgeModel

    saved = np.load(TORCH_REF)
    photos = [REPO / p for p in saved["paths"]]
    expected = _softmax(saved["logits"].astype(np.float64))
    for name in ARTIFACTS[::2]:
        model = EdgeModel.load(torch_export / name)
        batch = model.prepare(photos)
        pixels = batch.transpose(0, 2, 3, 1) if model.layout == "NCHW" else batch
        assert np.allclose(pixels, model.recipe.normalize(saved["pixels"]), atol=1e-5), name
        probs = model.probabilities(photos)
        assert np.abs(probs - expected).max() < 1e-4, name
        assert (probs.argmax(1) == saved["logits"].argmax(1)).all(), name


def test_torch_predict_and_bench_against_the_onnx_file(torch_export, sample_subset, tmp_path, capsys):
    photo = REPO / str(np.load(TORCH_REF)["paths"][0])
    code, out, _ = _cli(["predict", torch_export / "model_onnx_fp32.onnx", photo, "--top-k", "1"], capsys)
    assert code == 0 and out.startswith(f"{photo}: ")
    code, _, err = _cli(["bench", torch_export / "model_onnx_int8.onnx", torch_export / "model_tflite_fp32.tflite",
                         "--data", sample_subset(5), "--out", tmp_path / "bench", "--runs", "3", "--warmup", "1",
                         "--batch-sizes", "1", "--reference", TORCH_ONNX, "--no-overhead-check"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert report["reference"]["device"] == "CPU (ONNX Runtime FP32)"
    assert [r["artifact"] for r in report["rows"] if r["kind"] == "reference"] == ["reference (onnx)"]
    for entry in report["artifacts"]:
        versus = entry["vs_reference"]
        assert versus["space"] == "logits" and versus["n_images"] == 10, entry["name"]
        if entry["quantization"] == "none":
            assert versus["max_abs_diff"] < 1e-4 and versus["top1_agreement"] == 1.0, entry["name"]


def test_foreign_keras_model_through_every_format(keras_export, foreign_keras):
    for name in ARTIFACTS:
        sidecar = _sidecar(keras_export, name)
        assert sidecar["parity"]["passed"], (name, sidecar["parity"])
        assert sidecar["output"]["kind"] == "logits"
        assert sidecar["source_model"]["output_kind_found"].startswith("no trailing softmax")
        recipe = sidecar["preprocessing"]
        assert recipe["input_size"] == [32, 32] and recipe["resize_shorter"] is None
        assert recipe["mean"] == [0, 0, 0] and recipe["std"] == pytest.approx([255.0] * 3)
        if "fp32" in name:
            assert sidecar["parity"]["max_abs_diff"] < 1e-4, name


def test_foreign_keras_predictions_equal_keras_own(keras_export, foreign_keras, sample_subset):
    from edgetl.runtime import EdgeModel

    paths = sorted(sample_subset(10).glob("*/*.jpg"))
    expected = _softmax(np.load(foreign_keras.parent / "keras_outputs.npy").astype(np.float64))
    for name in ARTIFACTS[::2]:
        probs = EdgeModel.load(keras_export / name).probabilities(paths)
        assert np.abs(probs - expected).max() < 1e-4, name


def test_savedmodel_goes_through_the_keras_path(foreign_keras, sample_subset, tmp_path, capsys):
    import keras

    saved = tmp_path / "saved"
    keras.models.load_model(foreign_keras).export(str(saved), verbose=False)
    out = tmp_path / "out"
    code, _, err = _cli(["export", saved, "-o", out, "--scale", "1/255", "--resize", "0", "--labels", "ants,bees",
                         "--check", sample_subset(5)], capsys)
    assert code == 0, err
    sidecar = _sidecar(out, "model_onnx_fp32.onnx")
    assert sidecar["source_model"]["kind"] == "savedmodel" and sidecar["parity"]["max_abs_diff"] < 1e-5
    assert sidecar["output"]["kind"] == "logits" and sidecar["labels"] == ["ants", "bees"]


def test_edgetl_model_refuses_stated_preprocessing(foreign_keras, tmp_path, capsys):
    import shutil

    model_dir = tmp_path / "model"  # edgetl.json present: its recipe is the one, flags are refused first
    model_dir.mkdir()
    shutil.copyfile(foreign_keras, model_dir / "model.keras")
    (model_dir / "edgetl.json").write_text("{}")
    out = tmp_path / "out"
    _refused(["export", model_dir, "-o", out, "--preprocess", "torchvision"], capsys, out,
             "already states its preprocessing")


# -- bad input: one line, exit 2, nothing written -------------------------------------------------
def _refused(args, capsys, out: Path, *needles: str) -> str:
    code, stdout, err = _cli(args, capsys)
    assert code == 2, (stdout, err)
    # (progress lines such as "parity images: ..." may come first on stderr; the error is one line)
    lines = [line for line in err.strip().splitlines() if line.startswith("edgetl: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()
    return lines[0]


def _onnx_model(path: Path, inputs: list, output_shape, opset: int = 17) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph_inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)
    node = helper.make_node("Identity", [inputs[0][0]], ["y"])
    onnx.save(helper.make_model(helper.make_graph([node], "g", graph_inputs, [output]),
                                opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


@pytest.mark.parametrize("case", ["no-2d-output", "several-inputs", "dynamic-rank", "opset-too-new"])
def test_onnx_that_is_not_a_classifier_is_refused(case, tmp_path, capsys):
    path = tmp_path / "m.onnx"
    if case == "no-2d-output":
        _onnx_model(path, [("x", ["N", 3, 8, 8])], ["N", 3, 8, 8])
        needles = ("not a classifier's (batch, classes)",)
    elif case == "several-inputs":
        _onnx_model(path, [("x", ["N", 3, 8, 8]), ("z", ["N", 3, 8, 8])], ["N", 2])
        needles = ("2 inputs",)
    elif case == "dynamic-rank":
        _onnx_model(path, [("x", None)], ["N", 2])
        needles = ("dynamic rank",)
    else:
        _onnx_model(path, [("x", ["N", 3, 8, 8])], ["N", 2], opset=23)
        needles = ("opset 23 is newer than the converters here read",)
    out = tmp_path / "out"
    _refused(["export", path, "-o", out, "--preprocess", "torchvision"], capsys, out, *needles)


def test_foreign_model_without_stated_preprocessing_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    line = _refused(["export", TORCH_ONNX, "-o", out, "--labels", "ants,bees"], capsys, out, "--preprocess")
    assert "torchvision" in line and "--mean" in line


@pytest.mark.parametrize("recipe, field", [({"input_size": [64, 64], "mean": "0.5", "std": [1, 1, 1]}, "mean"),
                                           ({"input_size": 64, "mean": [0, 0, 0], "std": [1, 1, 1]}, "input_size"),
                                           ({"input_size": [64, 64], "mean": [0, 0, 0], "std": [1, 1, 1],
                                             "interpolation": 3}, "interpolation")])
def test_preprocessing_json_with_wrong_types_is_refused(recipe, field, tmp_path, capsys):
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    out = tmp_path / "out"
    _refused(["export", TORCH_ONNX, "-o", out, "--preprocess", tmp_path / "recipe.json"], capsys, out, f"{field} must be")


def test_labels_not_matching_the_output_width_are_refused(tmp_path, capsys):
    (tmp_path / "labels.txt").write_text("ants\nbees\nwasps\n")
    out = tmp_path / "out"
    _refused(["export", TORCH_ONNX, "-o", out, "--preprocess", "torchvision", "--labels", tmp_path / "labels.txt",
              "--check", REPO / "edgetl/samples/hymenoptera"], capsys, out, "3 labels given for a model with 2 outputs")


def test_contradictory_output_kind_is_refused(tmp_path, capsys, sample_subset):
    out = tmp_path / "out"
    _refused(["export", TORCH_ONNX, "-o", out, "--preprocess", "torchvision", "--output-kind", "probabilities",
              "--check", sample_subset(5)], capsys, out, "--output-kind probabilities contradicts")


def test_presets_and_flags_make_the_documented_recipes():
    from edgetl.preprocess_presets import StatedPreprocessing

    torchvision = StatedPreprocessing("torchvision").recipe((224, 224))
    assert torchvision.resize_shorter == 256 and torchvision.interpolation == "bilinear"
    assert np.allclose(torchvision.normalize(np.full((1, 1, 3), 255, np.uint8)),
                       [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225], atol=1e-5)
    inception = StatedPreprocessing("keras-inception").recipe((96, 96))
    assert np.allclose(inception.normalize(np.asarray([[[0, 255, 0]]], np.uint8)), [-1, 1, -1])
    flags = StatedPreprocessing(scale="1/255", mean="0.5", std="0.25", resize=0, channel_order="bgr").recipe((32, 32))
    assert flags.resize_shorter is None and flags.channel_order == "BGR"
    assert np.allclose(flags.normalize(np.asarray([[[255, 0, 0]]], np.uint8)), [-2, -2, 2])


def test_search_model_benches_the_given_onnx_file(sample_subset, tmp_path, capsys):
    """`search --model model.onnx`: no fine-tune or prune stage, one export and one bench per format x
    quantization, the front and winner as in any search; the baseline is ONNX Runtime FP32 of the file.
    Where Vela and onnx2tf are installed, also on npu:ethos-u55-128 (Vela's estimate, simulated accuracy)."""
    pytest.importorskip("ray")
    from edgetl.metadata import verify_artifact

    out = tmp_path / "search"
    npu = "npu:ethos-u55-128"
    ethos = all(_importable(m) for m in ("ethosu.vela", "onnx2tf"))
    args = ["search", sample_subset(10), "--out", out, "--model", TORCH_ONNX, "--preprocess", "torchvision",
            "--labels", "ants,bees", "--quantize", "fp32,int8", "--runs", "3", "--target", "cpu",
            *(["--target", npu] if ethos else [])]
    code, stdout, err = _cli(args, capsys)
    assert code == 0, err
    report = json.loads((out / "trials.json").read_text())
    trials = {t["trial"]: t for t in report["trials"]}
    if ethos:  # the target fixes the format and full-integer int8: one trial
        trial = trials.pop(f"torch_mnv2_ants_bees/given/sp0/tflite/int8@{npu}")
        assert trial["status"] == "done" and trial["stages"]["export"]["artifact"].endswith("_vela.tflite")
        assert trial["latency_evidence"] == "estimated" and trial["accuracy_evidence"] == "simulated"
        assert trial["npu_estimate"]["inference_ms"] > 0 and trial["agreement"] >= 0.75
        assert trial["reference_top1"] == report["baseline_top1"]  # ONNX Runtime FP32 of the file
    assert sorted(trials) == [f"torch_mnv2_ants_bees/given/sp0/onnx/{q}@cpu" for q in ("fp32", "int8")]
    assert report["counts"] == {"done": 2 + ethos, "failed": 0, "pruned": 0}
    assert sorted(p.name for p in (out / "stages").iterdir()) == ["bench", "data", "export"]  # nothing trained
    fp32, int8 = (trials[f"torch_mnv2_ants_bees/given/sp0/onnx/{q}@cpu"] for q in ("fp32", "int8"))
    assert fp32["agreement"] == 1.0 and int8["agreement"] >= 0.75
    assert fp32["reference_top1"] == report["baseline_top1"] >= 0.5  # PyTorch's model on 4 val photos
    assert fp32["size_bytes"] > 2 * int8["size_bytes"]
    for trial in trials.values():
        assert trial["stages"]["finetune"]["skipped"].startswith("--model")
        artifact = Path(trial["stages"]["export"]["artifact"])
        sidecar = _sidecar(artifact.parent, artifact.name)
        assert sidecar["source_model"]["kind"] == "onnx" and sidecar["input"]["layout"] == "NCHW"
        assert sidecar["preprocessing"]["mean"] == pytest.approx([123.675, 116.28, 103.53])
    pareto = json.loads((out / "pareto.json").read_text())["targets"]["cpu"]
    assert pareto["winner"]["trial"] in trials and f"winner on cpu: {pareto['winner']['trial']}" in stdout
    verify_artifact(next(Path(pareto["winner_dir"]).glob("*.onnx")))
    if ethos:
        entry = json.loads((out / "pareto.json").read_text())["targets"][npu]
        assert entry["winner"]["trial"].endswith(f"@{npu}") and entry["evidence"]["latency"] == ["estimated"]
        verify_artifact(next(Path(entry["winner_dir"]).glob("*_vela.tflite")))
    # A rerun keys the file and the stated flags the same way: every stage is reused.
    assert _cli(args, capsys)[0] == 0
    assert json.loads((out / "trials.json").read_text())["stages_built"] == 0


@pytest.mark.parametrize("extra, needle", [((), "no preprocessing stated"),
                                           (("--preprocess", "torchvision", "--labels", "a,b,c"), "3 labels given"),
                                           (("--preprocess", "torchvision", "--sparsity", "0,0.5"), "drop --sparsity")])
def test_search_model_bad_input_fails_before_ray(extra, needle, sample_subset, tmp_path, capsys):
    out = tmp_path / "search"
    _refused(["search", sample_subset(10), "--out", out, "--model", TORCH_ONNX, *extra], capsys, out, needle)


def test_torch_onnx_to_the_qnn_htp(sample_subset, tmp_path, capsys):
    """`export model.onnx --target npu:qnn-htp`: the file itself quantized to QDQ (NCHW, its own input name)
    and compiled; on the HTP simulator it agrees with ONNX Runtime FP32 of the file, in export and bench."""
    pytest.importorskip("onnxruntime_qnn")
    from edgetl import targets

    if targets.get("npu:qnn-htp").availability().level == "none":
        pytest.skip("no QNN HTP simulator or device here")
    data, out = sample_subset(10), tmp_path / "qnn"
    code, _, err = _cli(["export", TORCH_ONNX, "-o", out, "--target", "npu:qnn-htp", "--calib", data, "--check", data,
                         "--preprocess", "torchvision", "--labels", "ants,bees"], capsys)
    assert code == 0, err
    [compiled] = out.glob("*_ctx.onnx")
    for name in ("model_qnn_int8.onnx", compiled.name):
        sidecar = _sidecar(out, name)
        assert sidecar["input"]["layout"] == "NCHW" and sidecar["input"]["shape"] == [1, 3, 64, 64]
        assert sidecar["input"]["name"] == "input" and sidecar["source_model"]["kind"] == "onnx"
        assert sidecar["parity"]["passed"] and sidecar["parity"]["top1_agreement"] >= 0.95, sidecar["parity"]
    assert _sidecar(out, compiled.name)["target"]["cpu_nodes"] == []
    code, _, err = _cli(["bench", compiled, "--target", "npu:qnn-htp", "--simulate", "--data", data, "--out",
                         tmp_path / "bench", "--runs", "2"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert report["reference"]["device"] == "CPU (ONNX Runtime FP32)"
    [entry] = report["artifacts"]
    assert entry["vs_reference"]["top1_agreement"] >= 0.95 and entry["vs_reference"]["n_images"] == 20


def test_onnx_source_refuses_targets_it_cannot_take(tmp_path, capsys):
    out = tmp_path / "out"
    _refused(["export", TORCH_ONNX, "-o", out, "--target", "gpu:cuda", "--preprocess", "torchvision"], capsys, out,
             "--target gpu:cuda needs a Keras model")
