"""TFLite INT8 with a large classifier head: the head keeps int8 weights but computes in float
(``exporting.backends.tflite_head``), so the logits are not rounded to 1/256 of their range."""

from __future__ import annotations

import numpy as np

SIZE = 32
CLASSES = 100  # a head that is far over FLOAT_HEAD_MAX_SHARE of the weights: it stays int8-weighted


def _head_model():
    """Two convolutions and a 100-class Dense head with random, distinct biases (the converter shares
    equal constant buffers); no BatchNorm, so the logits depend on the image."""
    import keras

    keras.utils.set_random_seed(5)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    head = keras.layers.Dense(CLASSES, name="logits")
    model = keras.Model(inputs, head(x))
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 4, np.random.default_rng(5).normal(0, 0.5, bias.shape).astype(np.float32)])
    return model


def _model_dir(model, out):
    from edgetl.metadata import MODEL_SCHEMA, sha256_file, write_json
    from edgetl.preprocess import Preprocessing

    out.mkdir(parents=True)
    model.save(out / "model.keras")
    write_json(out / "edgetl.json", {
        "schema": MODEL_SCHEMA, "labels": [f"c{i}" for i in range(CLASSES)],
        "input": {"name": "image", "shape": [None, SIZE, SIZE, 3], "layout": "NHWC", "dtype": "float32"},
        "output": {"kind": "logits", "logits_layer": "logits"},
        "preprocessing": Preprocessing().with_input_size(SIZE).to_dict(), "backbone": "tiny_cnn",
        "dataset": {}, "model_sha256": sha256_file(out / "model.keras")})
    return out


def _head(path):
    """(input, weights, bias, output) tensor details of the model's FULLY_CONNECTED."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    (op,) = [op for op in interpreter._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
    return [details[i] for i in (*op["inputs"], *op["outputs"])]


def _logits(path, images):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    return np.concatenate([runner(image=image[None])["logits"] for image in images])


def test_int8_export_keeps_a_large_heads_weights_int8_and_its_logits_float(tmp_path, sample_dir):
    from edgetl.exporting import ExportConfig, export
    from edgetl.exporting.backends import tflite as tflite_export
    from edgetl.exporting.backends.tflite_bias import correct_biases
    from edgetl.exporting.backends.tflite_head import hybrid_head
    from edgetl.exporting.calibration import load_calibration
    from edgetl.metadata import read_sidecar
    from edgetl.preprocess import Preprocessing

    model = _head_model()
    assert tflite_export.dense_share(model) > 10 * tflite_export.FLOAT_HEAD_MAX_SHARE
    result = export(ExportConfig(model=_model_dir(model, tmp_path / "model"), out=tmp_path / "out",
                                 formats=("tflite",), modes=("fp32", "int8"), calib=sample_dir, check=sample_dir,
                                 min_agreement=0.9, verbose=False))
    fp32, hybrid = result.get("tflite", "fp32"), result.get("tflite", "int8")
    details = read_sidecar(hybrid.path)["quantization"]["details"]
    assert details["hybrid_ops"] == ["FULLY_CONNECTED"] and "float_ops" not in details
    assert details["bias_correction"]["layers"] == 3  # the head's int8 weights are corrected too
    features, weights, bias, logits = _head(hybrid.path)
    assert weights["dtype"] == np.int8 and weights["quantization_parameters"]["scales"].size == CLASSES
    for tensor in (features, bias, logits):  # float, with no quantization parameters
        assert tensor["dtype"] == np.float32 and tensor["quantization_parameters"]["scales"].size == 0

    # The same graph as the converter's int8 (head rounded to int8 logits), bias-corrected like the export.
    calib = load_calibration(sample_dir, Preprocessing().with_input_size(SIZE), 60)
    int8_head = tmp_path / "int8_head.tflite"
    tflite_export.convert(model, int8_head, "int8", calib, "float32")
    correct_biases(int8_head, fp32.path, calib, "float32")
    assert [t["dtype"] for t in _head(int8_head)] == [np.int8, np.int8, np.int32, np.int8]
    images = np.concatenate(list(calib.batches(chunk=16)))
    reference, rounded, hybrid_logits = (_logits(p, images) for p in (fp32.path, int8_head, hybrid.path))
    assert reference.std(0).mean() > 0.05  # the logits depend on the image (measured 0.106)
    # int8 logits sit on a grid of 1/256 of their range; the hybrid head's do not
    step = _head(int8_head)[3]["quantization_parameters"]["scales"][0]
    on_grid = lambda x: np.abs(x / step - np.round(x / step)) < 1e-3  # noqa: E731
    assert on_grid(rounded).mean() > 0.99 and on_grid(hybrid_logits).mean() < 0.1  # measured 1.0, 0.0025
    error = {name: float(np.abs(out - reference).mean()) for name, out in
             (("int8 head", rounded), ("hybrid head", hybrid_logits))}
    assert error["hybrid head"] < 0.8 * error["int8 head"], error  # measured 0.0015 vs 0.0035
    # a second pass finds no int8 head left (the export's artifact is final; the file stays as it is)
    again = tmp_path / "again.tflite"
    again.write_bytes(hybrid.path.read_bytes())
    assert hybrid_head(again)["ops"] == [] and again.read_bytes() == hybrid.path.read_bytes()
    # the export's own parity gate measured this artifact
    assert hybrid.passed and hybrid.parity["top1_agreement"] >= 0.9 and hybrid.parity["max_abs_diff"] > 0
