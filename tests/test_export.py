"""Export stage: every format x mode converts, parity with Keras, INT8 size and agreement, uint8 input,
sidecars, and one-line usage errors that leave nothing behind.

Conversions are grouped: one session export writes all formats x all modes (float input) and a second
one the uint8-input FP32/INT8 artifacts (conftest's ``lite0_matrix``, ``lite0_u8``); the tests only read
what those wrote.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgetl.errors import UsageError
from edgetl.metadata import fingerprint_files, read_json, read_sidecar, sha256_file, sidecar_path

FORMATS = ("onnx", "tflite", "openvino")
MODES = ("fp32", "fp16", "dynamic", "int8")


def _sample_files(sample_dir: Path) -> list[Path]:
    from edgetl.data import scan_unlabelled

    return scan_unlabelled(sample_dir)[0]


@pytest.fixture(scope="module")
def exported(lite0_matrix):
    # conftest's session export: all formats x all modes, calibrated and checked on all 60 sample images
    # (the val split is 12: one flipped image is 0.083 of agreement); the export's own gate at 0.9, the
    # tests assert their own thresholds on the recorded numbers.
    return lite0_matrix


@pytest.fixture(scope="module")
def exported_u8(lite0_u8):
    return lite0_u8


# -- conversions ------------------------------------------------------------------------------------
def test_every_format_and_mode_is_written_with_a_sidecar(exported):
    names = sorted(p.name for p in exported.out.iterdir())
    for fmt, ext in (("onnx", "onnx"), ("tflite", "tflite"), ("openvino", "xml")):
        for mode in MODES:
            name = f"model_{fmt}_{mode}.{ext}"
            assert name in names and f"{name}.json" in names
    assert (exported.out / "model_openvino_int8.bin").exists()
    assert {"calibration.json", "export_summary.json"} <= set(names)
    assert not [n for n in names if n.endswith((".tmp", ".partial", ".trial.onnx"))]
    summary = read_json(exported.out / "export_summary.json")
    assert len(summary["artifacts"]) == 12 and summary["passed"] is True
    assert "| model_onnx_int8.onnx |" in exported.table()


@pytest.mark.parametrize("fmt", FORMATS)
def test_fp32_matches_keras_within_1e4(exported, fmt):
    parity = exported.get(fmt, "fp32").parity
    assert parity["max_abs_diff"] <= 1e-4
    assert parity["top1_agreement"] == 1.0 and parity["cosine"] > 0.99999
    assert parity["passed"] and parity["n_images"] == 60


@pytest.mark.parametrize("fmt", FORMATS)
def test_int8_agrees_and_is_small(exported, fmt):
    int8, fp32 = exported.get(fmt, "int8"), exported.get(fmt, "fp32")
    assert int8.parity["top1_agreement"] >= 0.95
    assert int8.parity["cosine"] > 0.98
    # The bound. INT8 weights alone are 0.25x; per-channel scales and int32 biases add the rest
    # (efficientnet_lite0: ONNX 0.28x, OpenVINO 0.29x, TFLite 0.30x).
    assert int8.size_bytes <= 0.30 * fp32.size_bytes, (int8.size_bytes, fp32.size_bytes)


def test_openvino_int8_weights_are_pair_safe_by_default(exported):
    """OpenVINO has no exact-kernel switch, so ``--int8-weights auto`` bounds its weights themselves: in
    the saved IR, every Convolution's int8 weights keep neighbour pairs within the bound."""
    import openvino as ov

    from edgetl.exporting.pairs import PAIR_BOUND, max_pair_sum

    artifact = exported.get("openvino", "int8")
    details = read_sidecar(artifact.path)["quantization"]["details"]
    assert details["int8_weights"] == "pair-safe" and details["overflow_fix"] == "disable"
    sums = []
    for op in ov.Core().read_model(str(artifact.path)).get_ordered_ops():
        if op.get_type_name() != "Convolution":
            continue
        node = op.input_value(1).get_node()
        while node.get_type_name() != "Constant" and node.get_input_size():
            node = node.input_value(0).get_node()
        if node.get_output_element_type(0) == ov.Type.i8:
            sums.append(max_pair_sum(node.get_data(), "conv").max())
    assert len(sums) == details["pair_safe"]["layers"] - 1 > 10  # the classifier is a MatMul
    assert max(sums) <= PAIR_BOUND < 2 * 127


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", ("fp16", "dynamic"))
def test_fp16_and_dynamic_pass_their_checks(exported, fmt, mode):
    artifact, fp32 = exported.get(fmt, mode), exported.get(fmt, "fp32")
    assert artifact.passed and artifact.parity["top1_agreement"] >= 0.95
    assert artifact.size_bytes < (0.6 if mode == "fp16" else 0.35) * fp32.size_bytes


def test_artifacts_run_through_the_runtime_backend(exported, sample_dir):
    """The files on disk (not just the parity numbers) give logits matching the Keras model."""
    from edgetl.data import load_inputs
    from edgetl.training import load_trained
    from edgetl.preprocess import Preprocessing
    from edgetl.runtime.backends import open_backend

    model, meta = load_trained(exported_source(exported))
    recipe = Preprocessing.from_dict(meta["preprocessing"])
    x = load_inputs(_sample_files(sample_dir)[:4], recipe)
    import keras

    logits = keras.Model(model.inputs, model.get_layer("logits").output)(x).numpy()
    for fmt in FORMATS:
        out = open_backend(exported.get(fmt, "fp32").path).run(x)
        np.testing.assert_allclose(out, logits, atol=1e-4)


def exported_source(result) -> Path:
    return Path(result.artifacts[0].sidecar["source_model"]["path"]).parent


# -- uint8 input ------------------------------------------------------------------------------------
def test_uint8_input_artifacts_predict_like_float_ones(exported, exported_u8, sample_dir):
    from edgetl.data import load_pixels
    from edgetl.preprocess import Preprocessing
    from edgetl.runtime.backends import open_backend

    paths = _sample_files(sample_dir)
    for fmt in FORMATS:
        u8, f32 = exported_u8.get(fmt, "int8", "uint8"), exported.get(fmt, "int8")
        side = read_sidecar(u8.path)
        assert side["input"]["dtype"] == "uint8" and u8.path.name == f"model_{fmt}_int8_u8{u8.path.suffix}"
        recipe = Preprocessing.from_dict(side["preprocessing"])
        pixels = load_pixels(paths, recipe)
        backend = open_backend(u8.path)
        assert backend.input_dtype == np.uint8
        u8_top = backend.run(pixels).argmax(-1)
        f32_top = open_backend(f32.path).run(recipe.normalize(pixels)).argmax(-1)
        assert (u8_top == f32_top).mean() >= 0.95, fmt
        assert u8.parity["top1_agreement"] >= 0.95
    quant = read_sidecar(exported_u8.get("tflite", "int8", "uint8").path)["input"]["quantization"]
    assert quant == {"scale": 1.0, "zero_point": 0}  # raw pixels feed through unchanged


# -- sidecars ---------------------------------------------------------------------------------------
def test_sidecar_round_trips(exported, tiny_model_dir, sample_dir):
    meta = read_json(tiny_model_dir / "edgetl.json")
    calib_fingerprint = fingerprint_files(_sample_files(sample_dir), root=sample_dir)["fingerprint"]
    manifest = read_json(exported.out / "calibration.json")
    assert manifest["fingerprint"] == calib_fingerprint and manifest["count"] == 60
    model_sha = sha256_file(tiny_model_dir / "model.keras")
    for artifact in exported.artifacts:
        side = read_sidecar(artifact.path)
        assert side == read_json(sidecar_path(artifact.path))
        assert side["schema"] == "edgetl.artifact/1" and side["format"] == artifact.format
        assert side["file"] == artifact.path.name and side["sha256"] == sha256_file(artifact.path)
        assert side["labels"] == meta["labels"] == ["ants", "bees"]
        assert side["input"]["shape"] == [None, 96, 96, 3] and side["input"]["layout"] == "NHWC"
        assert side["input"]["dtype"] == "float32"
        assert side["output"]["kind"] == "logits"
        assert side["preprocessing"] == meta["preprocessing"]
        assert side["source_model"]["sha256"] == model_sha
        assert side["quantization"]["mode"] == ("none" if artifact.mode == "fp32" else artifact.mode)
        if artifact.mode == "int8":
            assert side["quantization"]["calibration"]["fingerprint"] == calib_fingerprint
            assert side["quantization"]["calibration"]["count"] == 60
        for key in ("top1_agreement", "max_abs_diff", "mean_abs_diff", "cosine", "n_images", "compared_on",
                    "precision", "passed", "threshold"):
            assert key in side["parity"]
    assert read_sidecar(exported.get("openvino", "fp32").path)["parity"]["precision"] == "f32"
    onnx_side = read_sidecar(exported.get("onnx", "fp32").path)
    assert onnx_side["quantization"]["details"]["opset"] == 17


# -- bad inputs -------------------------------------------------------------------------------------
def _bad_configs(tiny_model_dir: Path, sample_dir: Path, tmp: Path) -> dict[str, tuple[dict, list[str]]]:
    bare = tmp / "bare"
    bare.mkdir()
    shutil.copy(tiny_model_dir / "model.keras", bare / "model.keras")
    empty = tmp / "empty_calib"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    model = str(tiny_model_dir)
    return {
        "no metadata, no input size": (dict(model=bare), [str(bare)]),
        "unknown format": (dict(model=tiny_model_dir, formats=("coreml",)), [model, "--format", "coreml"]),
        "unknown mode": (dict(model=tiny_model_dir, modes=("int4",)), [model, "--quantize", "int4"]),
        "missing calib": (dict(model=tiny_model_dir, modes=("int8",), calib=tmp / "nowhere"),
                          [model, "-q", "int8", "--calib", str(tmp / "nowhere")]),
        "empty calib": (dict(model=tiny_model_dir, modes=("int8",), calib=empty),
                        [model, "-q", "int8", "--calib", str(empty)]),
        "int8 without calib": (dict(model=tiny_model_dir, modes=("int8",)), [model, "-q", "int8"]),
    }


def test_bad_inputs_raise_one_line_usage_errors(tiny_model_dir, sample_dir, tmp_path):
    from edgetl.exporting import ExportConfig, export

    for case, (kwargs, _) in _bad_configs(tiny_model_dir, sample_dir, tmp_path).items():
        out = tmp_path / f"out_{case.replace(' ', '_')}"
        with pytest.raises(UsageError) as info:
            export(ExportConfig(out=out, verbose=False, **kwargs))
        assert "\n" not in str(info.value) and str(info.value), case
        assert not out.exists(), case
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out_")]  # no temp dirs left


def test_cli_bad_inputs_exit_2_and_leave_nothing(tiny_model_dir, sample_dir, tmp_path, capsys):
    from edgetl.cli import main

    for case, (_, argv) in _bad_configs(tiny_model_dir, sample_dir, tmp_path).items():
        out = tmp_path / f"cli_{case.replace(' ', '_')}"
        assert main(["export", *argv, "--out", str(out)]) == 2, case
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("edgetl: error:"), (case, err)
        assert not out.exists(), case


def test_unsupported_mode_names_the_formats_that_support_it(tiny_model_dir, tmp_path, monkeypatch):
    """An onnxruntime without its transformers tools cannot write fp16 ONNX: the error says who can."""
    import edgetl.exporting as export_module
    import edgetl.exporting.formats as formats_module
    from edgetl.cli import main

    support = {"onnx": ("fp32", "dynamic", "int8"), "tflite": MODES, "openvino": MODES}
    monkeypatch.setattr(formats_module, "supported_modes", lambda: support)
    with pytest.raises(UsageError, match="fp16 is not supported for onnx.*tflite, openvino"):
        export_module.export(export_module.ExportConfig(model=tiny_model_dir, out=tmp_path / "o", modes=("fp16",)))
    assert main(["export", str(tiny_model_dir), "-q", "fp16", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_callable_from_the_package_root(tmp_path, tiny_model_dir):
    import edgetl
    import edgetl.exporting

    # The package is named for the job and the function for the verb: edgetl.export is always the function.
    assert callable(edgetl.export) and not callable(edgetl.exporting)
    assert edgetl.export is edgetl.exporting.export and edgetl.ExportConfig is edgetl.exporting.ExportConfig
    with pytest.raises(UsageError):
        edgetl.export(edgetl.ExportConfig(model=tiny_model_dir, out=tmp_path / "o", formats=("nope",)))


def test_sensitivity_ranks_layers_by_their_own_int8_error(exported, sample_dir, tmp_path):
    """The accuracy-aware ranking: every Conv/Gemm of the QDQ model gets a measured own error, the
    worst first, and excluding the top ones keeps those nodes float in a re-quantized model."""
    import onnx

    from edgetl.data import load_inputs
    from edgetl.exporting.backends import onnx as onnx_export
    from edgetl.exporting.sensitivity import rank_onnx_nodes
    from edgetl.preprocess import Preprocessing

    fp32 = exported.get("onnx", "fp32").path
    pre = tmp_path / "pre.onnx"
    onnx_export.preprocess(fp32, pre)
    recipe = Preprocessing.from_dict(read_sidecar(fp32)["preprocessing"])
    x = load_inputs(_sample_files(sample_dir)[:8], recipe)
    ranked = rank_onnx_nodes(pre, exported.get("onnx", "int8").path, x)
    assert len(ranked) == len(onnx_export.node_names(pre)) > 40
    errors = [e for _, e in ranked]
    assert errors == sorted(errors, reverse=True) and errors[0] > 0.01

    from edgetl.exporting.calibration import load_calibration

    cache = tmp_path / "ranges.json"
    onnx_export.calibrate(pre, load_calibration(sample_dir, recipe, 16), "float32", "minmax", cache)
    partial = tmp_path / "partial.onnx"
    excluded = [name for name, _ in ranked[:2]]
    onnx_export.quantize_int8(pre, partial, cache, "minmax", excluded)
    graph = onnx.load(str(partial)).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    float_convs = {n.name for n in graph.node if n.op_type in ("Conv", "Gemm")
                   and producer.get(n.input[1]) != "DequantizeLinear"}
    assert float_convs == set(excluded)  # exactly the excluded ones read float weights


def test_openvino_accuracy_control_reverts_layers_until_agreement_holds(exported, sample_dir, tmp_path, monkeypatch):
    """``--accuracy-aware`` for OpenVINO: NNCF's accuracy control, asked for full agreement with the FP32
    IR on 24 sample images, returns a model that has it, and names the layers it left in float. It never
    reads the exporting CPU's flags (it once searched with 7-bit weights on CPUs without VNNI)."""
    import openvino as ov

    import edgetl.runtime.cpu

    def no_flag_reading():
        raise AssertionError("accuracy-aware OpenVINO read the exporting CPU's flags")

    from edgetl.exporting.backends import openvino as ov_export
    from edgetl.exporting.calibration import load_calibration
    from edgetl.preprocess import Preprocessing

    fp32 = exported.get("openvino", "fp32").path
    recipe = Preprocessing.from_dict(read_sidecar(fp32)["preprocessing"])
    calib = load_calibration(sample_dir, recipe, 16)
    x = recipe.normalize(load_calibration(sample_dir, recipe, 24).pixels)  # few images: NNCF validates per layer
    core = ov.Core()

    def top1(model) -> np.ndarray:
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return np.concatenate([compiled(x[i:i + 1])[0] for i in range(len(x))]).argmax(-1)

    reference = top1(core.read_model(str(fp32)))
    plain, _ = ov_export.quantize_int8(core.read_model(str(fp32)), calib, "float32")
    monkeypatch.setattr(edgetl.runtime.cpu, "int8_dot_saturates", no_flag_reading)
    controlled, details = ov_export.quantize_int8_accuracy_aware(core.read_model(str(fp32)), calib, "float32",
                                                                 x, reference, min_agreement=1.0)
    monkeypatch.undo()
    assert (top1(controlled) == reference).mean() == 1.0
    assert details["accuracy_control"] == {"metric": "top-1 agreement with Keras FP32", "images": 24,
                                           "max_drop": 0.0, "searched_with": "7-bit",
                                           "reverted": len(ov_export.float_layer_names(controlled))}
    # The float-layer finder: all convs of the FP32 IR, none of plain INT8 (also once saved and re-read).
    every_conv = ov_export.float_layer_names(core.read_model(str(fp32)))
    assert len(every_conv) > 40 and ov_export.float_layer_names(plain) == []
    ov_export.save(plain, tmp_path / "plain.xml")
    assert ov_export.float_layer_names(core.read_model(str(tmp_path / "plain.xml"))) == []
    assert set(ov_export.float_layer_names(controlled)) < set(every_conv)
