"""The device runtime (``edgetl.runtime.EdgeModel``) and ``edgetl predict``, on real artifacts of the
tiny trained model in every format, checked against the Keras model on the same preprocessed inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.errors import CheckFailed, UsageError
from edgetl.metadata import sha256_file, sidecar_path, write_json
from edgetl.preprocess import Preprocessing
from edgetl.runtime import EdgeModel, softmax

REPO = Path(__file__).resolve().parents[1]
FORMATS = ("onnx", "tflite", "openvino")
N_IMAGES = 6  # conftest.CNN_IMAGES: 3 ants + 3 bees


# -- artifacts ----------------------------------------------------------------------------------------
# The small CNN's artifacts come from conftest's session fixture ``cnn_artifacts`` (made by the real
# exporter, shared with test_decode.py and test_example_app.py).
@pytest.fixture(scope="session")
def artifacts(cnn_artifacts):
    return cnn_artifacts


def _copy_artifact(src: Path, dst_dir: Path, with_sidecar: bool = True) -> Path:
    import shutil

    dst_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst_dir / src.name)
    if src.suffix == ".xml":
        shutil.copy(src.with_suffix(".bin"), dst_dir / src.with_suffix(".bin").name)
    if with_sidecar:
        shutil.copy(sidecar_path(src), dst_dir / sidecar_path(src).name)
    return dst_dir / src.name


def _run_python(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


# -- parity with Keras --------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_matches_keras(artifacts, fmt):
    model = EdgeModel.load(artifacts.paths[fmt])
    assert model.labels == artifacts.labels == ["ants", "bees"]
    assert model.input_size == (96, 96)
    assert model.metadata["format"] == fmt
    probs = model.probabilities(artifacts.images)
    keras_top1 = artifacts.keras_probs.argmax(axis=1)
    # The trained tiny model is confident enough that top-1 is not decided by rounding.
    assert np.abs(artifacts.keras_probs[:, 0] - 0.5).min() > 0.01
    np.testing.assert_array_equal(probs.argmax(axis=1), keras_top1)
    np.testing.assert_allclose(probs, artifacts.keras_probs, atol=2e-4)
    ranked = model.predict(artifacts.images, top_k=5)
    assert [r[0][0] for r in ranked] == [artifacts.labels[i] for i in keras_top1]
    for row, reference in zip(ranked, artifacts.keras_probs):
        assert len(row) == 2  # top_k is capped at the number of labels
        assert row[0][1] >= row[1][1]
        assert abs(sum(score for _, score in row) - 1.0) < 1e-5
        assert abs(row[0][1] - reference.max()) < 2e-4


@pytest.mark.parametrize("fmt", FORMATS)
def test_uint8_input_artifact_matches_float_input(artifacts, fmt):
    float_model = EdgeModel.load(artifacts.paths[fmt])
    pixel_model = EdgeModel.load(artifacts.paths[f"{fmt}_uint8"])
    assert pixel_model.input_dtype == np.uint8 and float_model.input_dtype == np.float32
    batch = pixel_model.prepare(artifacts.images[:2])
    assert batch.dtype == np.uint8 and batch.shape == (2, 96, 96, 3)
    np.testing.assert_allclose(pixel_model.probabilities(artifacts.images),
                               float_model.probabilities(artifacts.images), atol=1e-4)
    assert ([r[0][0] for r in pixel_model.predict(artifacts.images)]
            == [r[0][0] for r in float_model.predict(artifacts.images)])


def test_exported_int8_artifact_agrees_with_keras(artifacts):
    model = EdgeModel.load(artifacts.paths["tflite_int8_uint8"])
    assert model.metadata["quantization"]["mode"] == "int8" and model.input_dtype == np.uint8
    probs = model.probabilities(artifacts.images)
    assert (probs.argmax(axis=1) == artifacts.keras_probs.argmax(axis=1)).mean() >= 5 / 6
    assert np.abs(probs - artifacts.keras_probs).max() < 0.1


def test_prepare_replays_the_training_side_preprocessing(artifacts):
    """``EdgeModel.prepare`` == ``edgetl.data.load_inputs``: the inputs the Keras model, calibration
    and parity checks see are the ones the device feeds."""
    from edgetl.data import load_inputs

    model = EdgeModel.load(artifacts.paths["tflite"])
    np.testing.assert_array_equal(model.prepare(artifacts.images), load_inputs(artifacts.images, model.recipe))


def test_int8_input_artifact_gets_quantized_input(runtime_model_dir, artifacts, tmp_path):
    """A full-integer TFLite artifact (int8 in, int8 out): the runtime quantizes the normalised input
    with the sidecar's scale/zero point and the backend dequantizes the logits.
    Built here with the TFLite converter: the exporter keeps float (or raw-pixel) I/O for int8."""
    import keras
    import tensorflow as tf

    from edgetl.data import load_inputs
    from edgetl.training import load_trained

    keras_model, meta = load_trained(runtime_model_dir)
    logits_model = keras.Model(keras_model.input, keras_model.get_layer("logits").output)
    recipe = Preprocessing.from_dict(meta["preprocessing"])
    calibration = load_inputs(artifacts.images, recipe)
    converter = tf.lite.TFLiteConverter.from_keras_model(logits_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None]] for x in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    path = tmp_path / "model_int8.tflite"
    path.write_bytes(converter.convert())
    sidecar = json.loads(sidecar_path(artifacts.paths["tflite"]).read_text())
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(path)).get_input_details()[0]
    scale, zero = details["quantization"]
    output_scale = Interpreter(model_path=str(path)).get_output_details()[0]["quantization"][0]
    sidecar.update(file=path.name, sha256=sha256_file(path), files={path.name: sha256_file(path)})
    sidecar["input"].update(dtype="int8", quantization={"scale": scale, "zero_point": zero})
    sidecar["output"]["dtype"] = "int8"
    write_json(sidecar_path(path), sidecar)

    model = EdgeModel.load(path)
    batch = model.prepare(artifacts.images)
    assert batch.dtype == np.int8
    np.testing.assert_array_equal(batch, np.clip(np.round(calibration / scale + zero), -128, 127))
    logits = model.run(batch)
    keras_logits = np.asarray(logits_model.predict(calibration, verbose=0))
    # Quantization error of a 3-conv net: a few output steps, far below the logit gaps.
    assert np.abs(logits - keras_logits).max() < 0.1 * np.abs(keras_logits).max() + 4 * output_scale
    assert ([r[0][0] for r in model.predict(artifacts.images, top_k=1)]
            == [artifacts.labels[i] for i in artifacts.keras_probs.argmax(axis=1)])


def test_predict_batch_matches_predict(artifacts):
    for fmt in ("onnx", "tflite"):
        model = EdgeModel.load(artifacts.paths[fmt])
        assert model.backend.dynamic_batch
        one_by_one = model.predict(artifacts.images, top_k=1)
        batched = model.predict_batch(artifacts.images, top_k=1, batch_size=4)  # 4 + 2: two shapes
        assert [r[0][0] for r in batched] == [r[0][0] for r in one_by_one]
        np.testing.assert_allclose([r[0][1] for r in batched], [r[0][1] for r in one_by_one], atol=1e-5)


# -- inputs -----------------------------------------------------------------------------------------
def test_paths_pil_images_and_arrays_agree(artifacts):
    model = EdgeModel.load(artifacts.paths["onnx"])
    path = artifacts.images[0]
    pil = Image.open(path)
    array = np.asarray(pil.convert("RGB"))
    by_path, by_pil, by_array = model.predict([path, pil, array], top_k=2)
    assert by_path == by_pil == by_array
    assert model.predict(str(path), top_k=2) == by_path  # one image in -> one list out
    # An array already at the input size is taken as cropped pixels; a 4-D array is a batch.
    cropped = model.recipe.resize_and_crop(pil)
    assert model.predict(cropped, top_k=2) == by_path
    assert model.predict(np.stack([cropped] * 3), top_k=1) == [by_path[:1]] * 3


def test_grayscale_rgba_and_odd_sizes_are_converted(artifacts):
    model = EdgeModel.load(artifacts.paths["onnx"])
    rgb = Image.open(artifacts.images[3]).convert("RGB")
    gray = rgb.convert("L")
    rgba = rgb.convert("RGBA")
    assert model.predict(gray) == model.predict(gray.convert("RGB"))
    assert model.predict(np.asarray(gray)) == model.predict(gray.convert("RGB"))  # HxW array
    assert model.predict(rgba) == model.predict(rgb)
    assert model.predict(np.asarray(rgba)) == model.predict(rgb)  # HxWx4 array
    # A wrong-sized array is resized and cropped by the recipe, like the image it came from.
    odd = np.asarray(rgb.resize((333, 171)))
    assert model.prepare(odd).shape == (1, 96, 96, 3)
    assert model.predict(odd) == model.predict(Image.fromarray(odd))


def test_softmax_is_stable_and_top_k_validated(artifacts):
    probs = softmax(np.array([[1000.0, 0.0], [-1000.0, -1000.0]], np.float32))
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs, [[1.0, 0.0], [0.5, 0.5]], atol=1e-7)
    model = EdgeModel.load(artifacts.paths["onnx"])
    assert len(model.predict(artifacts.images[0], top_k=1)) == 1
    with pytest.raises(UsageError, match="top_k"):
        model.predict(artifacts.images[0], top_k=0)


def test_raw_run_gives_logits(artifacts):
    model = EdgeModel.load(artifacts.paths["openvino"])
    logits = model.run(model.prepare(artifacts.images))
    assert logits.shape == (N_IMAGES, 2) and logits.dtype == np.float32
    np.testing.assert_allclose(softmax(logits), artifacts.keras_probs, atol=2e-4)


# -- thread safety ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_predict_from_four_threads_gives_identical_results(artifacts, fmt):
    model = EdgeModel.load(artifacts.paths[fmt], threads=1)
    expected = [model.predict(image, top_k=2) for image in artifacts.images]
    results: dict[int, list] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def hammer(worker: int) -> None:
        try:
            start.wait()
            order = list(range(len(artifacts.images))) * 3
            order = order[worker:] + order[:worker]  # threads run different images at the same time
            results[worker] = [(i, model.predict(artifacts.images[i], top_k=2)) for i in order]
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(results) == 4
    for worker_results in results.values():
        for index, ranked in worker_results:
            assert ranked == expected[index]


# -- no TensorFlow on the device path ----------------------------------------------------------------
FORBIDDEN = ("tensorflow", "keras", "tf2onnx", "tf_keras", "edgetl.data", "edgetl.training", "edgetl.zoo")


def test_runtime_imports_no_tensorflow(artifacts):
    code = f"""
import sys
from edgetl.runtime import EdgeModel
from edgetl.cli import main
for path in {[str(artifacts.paths[f]) for f in FORMATS]!r}:
    model = EdgeModel.load(path)
    print(model.predict({str(artifacts.images[0])!r}, top_k=1))
assert main(["predict", {str(artifacts.paths["onnx"])!r}, {str(artifacts.images[0])!r}]) == 0
bad = sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r} or m in {FORBIDDEN!r})
print("FORBIDDEN:", bad)
"""
    result = _run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "FORBIDDEN: []" in result.stdout, result.stdout


# -- bad input ----------------------------------------------------------------------------------------
def _foreign_copy(src: Path, dst_dir: Path) -> Path:
    """An ONNX artifact with neither sidecar nor edgetl's embedded metadata (as another tool wrote it)."""
    import onnx

    lonely = _copy_artifact(src, dst_dir, with_sidecar=False)
    model = onnx.load(str(lonely))
    del model.metadata_props[:]
    onnx.save(model, str(lonely))
    return lonely


def test_artifact_without_sidecar(artifacts, tmp_path):
    # edgetl's own artifacts carry their description inside: the sidecar is optional ...
    lonely = _copy_artifact(artifacts.paths["onnx"], tmp_path / "embedded", with_sidecar=False)
    assert EdgeModel.load(lonely).predict(artifacts.images[0]) == \
        EdgeModel.load(artifacts.paths["onnx"]).predict(artifacts.images[0])
    # ... a file with neither is refused in one line
    lonely = _foreign_copy(artifacts.paths["onnx"], tmp_path)
    with pytest.raises(UsageError) as info:
        EdgeModel.load(lonely)
    message = str(info.value)
    assert "\n" not in message
    assert sidecar_path(lonely).name in message and "edgetl export" in message


def test_missing_openvino_weights_and_unknown_suffix(artifacts, tmp_path):
    xml = _copy_artifact(artifacts.paths["openvino"], tmp_path)
    xml.with_suffix(".bin").unlink()
    with pytest.raises(CheckFailed, match=r"\.bin is missing"):
        EdgeModel.load(xml)
    with pytest.raises(UsageError, match="unknown artifact type"):
        EdgeModel.load(tmp_path / "model.pt")


def test_unavailable_device_is_exit_3(artifacts):
    import onnxruntime

    from edgetl.errors import DeviceUnavailable

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has a GPU provider")
    with pytest.raises(DeviceUnavailable, match="no gpu execution provider") as info:
        EdgeModel.load(artifacts.paths["onnx"], device="gpu")
    assert info.value.exit_code == 3


def test_undecodable_image(artifacts, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    model = EdgeModel.load(artifacts.paths["onnx"])
    with pytest.raises(UsageError, match="broken.jpg: cannot decode"):
        model.predict(broken)
    with pytest.raises(UsageError, match="no such file"):
        model.predict(tmp_path / "absent.jpg")


@pytest.mark.parametrize("fmt,module,extra", [("onnx", "onnxruntime", "edgetl[runtime-onnx]"),
                                              ("tflite", "ai_edge_litert", "edgetl[runtime-tflite]"),
                                              ("openvino", "openvino", "edgetl[runtime-openvino]")])
def test_missing_runtime_package_names_the_extra(artifacts, fmt, module, extra):
    code = f"""
import sys
sys.modules[{module!r}] = None  # as if the package were not installed
from edgetl.errors import EdgetlError
from edgetl.runtime import EdgeModel
try:
    EdgeModel.load({str(artifacts.paths[fmt])!r})
except EdgetlError as exc:
    print("ERROR:", exc)
"""
    result = _run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("ERROR:")]
    assert len(lines) == 1 and f"pip install '{extra}'" in lines[0], result.stdout


# -- edgetl predict -----------------------------------------------------------------------------------
def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    from edgetl.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_predict_text_json_and_folders(artifacts, tmp_path, capsys):
    art = artifacts.paths["tflite"]
    code, out, _ = _cli(["predict", art, artifacts.images[0], artifacts.images[-1], "--top-k", "1"], capsys)
    assert code == 0
    top1 = [artifacts.labels[i] for i in artifacts.keras_probs.argmax(axis=1)]
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{artifacts.images[0]}: {top1[0]} ")
    assert lines[1].startswith(f"{artifacts.images[-1]}: {top1[-1]} ")

    # A folder is searched recursively in sorted order; an undecodable member is skipped with a warning.
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for i, image in enumerate(artifacts.images[:3]):
        target = folder / ("nested" if i == 2 else "") / f"{i}_{image.name}"
        target.write_bytes(image.read_bytes())
    (folder / "1_corrupt.jpg").write_bytes(b"garbage")
    (folder / "notes.txt").write_text("not an image")
    code, out, err = _cli(["predict", art, folder, "--json", "--threads", "1"], capsys)
    assert code == 0
    document = json.loads(out)
    assert [Path(d["image"]).name for d in document] == [
        f"0_{artifacts.images[0].name}", f"1_{artifacts.images[1].name}", f"2_{artifacts.images[2].name}"]
    assert [d["predictions"][0]["label"] for d in document] == top1[:3]
    assert all(len(d["predictions"]) == 2 for d in document)
    assert abs(document[0]["predictions"][0]["score"] - artifacts.keras_probs[0].max()) < 2e-4
    assert err.count("warning: skipped") == 1 and "1_corrupt.jpg" in err


def test_cli_predict_errors_are_one_line(artifacts, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"garbage")
    art = artifacts.paths["onnx"]
    for args, fragment in [
        (["predict", art, broken], "broken.png: cannot decode"),
        (["predict", art, tmp_path / "absent.jpg"], "no such image or folder"),
        (["predict", _foreign_copy(art, tmp_path / "alone"), artifacts.images[0]], "sidecar"),
        (["predict", art, artifacts.images[0], "--device", "tpu"], "unknown device"),
    ]:
        code, out, err = _cli(args, capsys)
        assert code == 2, (args, err)
        assert err.count("\n") == 1 and fragment in err, err


# -- INT8 kernels on x86 CPUs without VNNI ----------------------------------------------------------
def _saturating_qdq_conv(path: Path, channels: int = 64) -> np.ndarray:
    """A QDQ 1x1 conv whose every uint8 x int8 product pair (255 * 127, twice) overflows int16: the
    worst case of the ``vpmaddubsw`` kernels. Returns the exact output value for an all-255 input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"])]
    exact = channels * 255.0  # weights dequantize to 127 * (1/127) = 1
    initializers = [numpy_helper.from_array(np.array(1.0, np.float32), "xs"),
                    numpy_helper.from_array(np.array(0, np.uint8), "xz"),
                    numpy_helper.from_array(np.full((4, channels, 1, 1), 127, np.int8), "w"),
                    numpy_helper.from_array(np.full(4, 1 / 127, np.float32), "ws"),
                    numpy_helper.from_array(np.array(exact / 255, np.float32), "ys"),
                    numpy_helper.from_array(np.array(0, np.uint8), "yz")]
    graph = helper.make_graph(nodes, "saturation", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 4, 4])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return np.float32(exact)


def test_onnx_int8_kernels_are_exact_by_default_also_without_vnni(tmp_path):
    from edgetl.runtime.backends import OnnxBackend
    from edgetl.runtime.cpu import int8_dot_saturates

    exact = _saturating_qdq_conv(tmp_path / "sat.onnx")
    x = np.full((1, 64, 4, 4), 255, np.float32)
    default = OnnxBackend(tmp_path / "sat.onnx")
    np.testing.assert_array_equal(default.run(x), exact)
    fast = OnnxBackend(tmp_path / "sat.onnx", exact_int8=False).run(x)
    if int8_dot_saturates():  # the trap the default avoids, shown on this CPU (AVX2/AVX-512F, no VNNI)
        assert default.settings == {"session.x64quantprecision": "1"}
        assert float(fast.max()) < 0.6 * exact, "the saturating U8S8 kernel was expected here"
    else:
        assert default.settings == {}
        np.testing.assert_array_equal(fast, exact)


def test_pair_safe_weights_make_the_fast_kernels_exact(tmp_path):
    """``export --int8-weights pair-safe`` on the worst case: after ``bound_weight_pairs`` no weight pair
    exceeds 128, the fast kernels give what the exact ones give, and a sidecar saying so lets the
    runtime skip the exact-kernel switch."""
    import onnx
    from onnx import numpy_helper

    from edgetl.exporting.backends.onnx import bound_weight_pairs
    from edgetl.exporting.pairs import PAIR_BOUND
    from edgetl.runtime.backends import OnnxBackend, open_backend
    from edgetl.runtime.cpu import int8_dot_saturates

    path = tmp_path / "sat.onnx"
    exact = _saturating_qdq_conv(path)
    report = bound_weight_pairs(path)
    assert report["layers"] == 1 and report["median_scale_growth"] > 1.9  # 127 + 127 -> 64 + 64
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}["w"]
    pairs = np.abs(weights[:, 0::2].astype(int)) + np.abs(weights[:, 1::2].astype(int))
    assert weights.dtype == np.int8 and pairs.max() == PAIR_BOUND
    x = np.full((1, 64, 4, 4), 255, np.float32)
    fast = OnnxBackend(path, exact_int8=False).run(x)
    np.testing.assert_array_equal(fast, OnnxBackend(path, exact_int8=True).run(x))
    np.testing.assert_allclose(fast, exact, rtol=0.01)  # weights 64 * 2/127: within one weight step
    # No sidecar, no claim: the exact-kernel switch stays on where the CPU saturates.
    assert open_backend(path).settings == ({"session.x64quantprecision": "1"} if int8_dot_saturates() else {})
    write_json(path.with_name(path.name + ".json"), {"quantization": {"details": {"int8_weights": "pair-safe"}}})
    assert open_backend(path).settings == {}


def test_exact_int8_is_accepted_and_ignored_by_the_other_runtimes(artifacts):
    """An app may pass ``exact_int8`` whatever the artifact; only ONNX Runtime has the switch."""
    for fmt in FORMATS:
        model = EdgeModel.load(artifacts.paths[fmt], exact_int8=False)
        assert model.backend.format == fmt and model.backend.settings.get("session.x64quantprecision") is None


# -- the backend interface ----------------------------------------------------------------------------
def test_backends_do_not_share_runtime_settings(artifacts):
    """``settings`` belongs to one backend: what one LiteRT backend records never shows up on another
    (it was once a class attribute, one dict shared by every instance)."""
    from edgetl.runtime.backends import open_backend

    first, second = open_backend(artifacts.paths["tflite"]), open_backend(artifacts.paths["tflite"])
    assert first.settings == second.settings == {} and first.settings is not second.settings
    first.settings["recorded"] = "by the first only"
    assert second.settings == {} and open_backend(artifacts.paths["tflite"]).settings == {}
    openvino = open_backend(artifacts.paths["openvino"])
    assert openvino.settings == {"INFERENCE_PRECISION_HINT": "f32"}
    assert first.settings == {"recorded": "by the first only"}


def test_every_backend_reports_its_placement_and_devices(artifacts):
    """The bench's per-format questions answered by the backend itself: nodes per device on the CPU
    (all of them on the CPU, none counted as fallback) and which devices of this machine serve a target."""
    from edgetl.runtime.backends import BACKENDS, available_devices, open_backend, target_devices

    available = available_devices()
    for fmt in FORMATS:
        backend = open_backend(artifacts.paths[fmt])
        sample = np.zeros([1, *backend.input_shape[1:]], backend.input_dtype)
        placement = backend.node_placement(sample)
        assert placement["requested"] == "cpu" and placement["verified"] and placement["cpu_fallback_nodes"] == 0
        assert list(placement["nodes"]) == ["CPU"] and placement["nodes"]["CPU"] >= 3, placement  # 3 convs at least
        cls = BACKENDS[fmt]
        assert cls.devices_for("cpu") == cls.devices_for("cpu", available) != []
        assert cls.devices_for("cpu", {}) == [] and cls.devices_for("gpu", {}) == []
        assert target_devices("cpu", available)[fmt] == cls.devices_for("cpu", available)
    assert open_backend(artifacts.paths["openvino"], precision=None).reported_precision == "native"
    assert open_backend(artifacts.paths["onnx"]).reported_precision is None
