"""Target registry, NPU export and the simulated/estimated bench: real onnxruntime-qnn (HTP simulator)
and real Vela on the tiny 96 px model; exit 3 for missing tools and for hardware-only targets here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetl.cli import main
from edgetl.metadata import sha256_file

SCHEMA = Path(__file__).resolve().parents[1] / "edgetl" / "schemas" / "bench.schema.json"


@pytest.fixture(scope="module")
def small_data(sample_subset) -> Path:
    """4 images per class: the HTP simulator and LiteRT's reference kernels are slow per image."""
    return sample_subset(4)


def _validate(report: dict) -> None:
    import jsonschema

    jsonschema.validate(report, json.loads(SCHEMA.read_text()))


# -- registry ----------------------------------------------------------------------------------------
def test_targets_command_lists_every_target(capsys):
    assert main(["targets", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    for name in ("cpu", "npu:qnn-htp", "npu:ethos-u55-256", "npu:ethos-u65-512", "npu:ethos-u85-256", "npu:intel",
                 "gpu:cuda", "gpu:tensorrt", "gpu:openvino", "gpu:litert"):
        assert name in rows, name
        assert rows[name]["availability"]["level"] in ("hardware", "simulator", "estimator", "none")
    assert rows["cpu"]["availability"]["level"] == "hardware"
    assert rows["npu:qnn-htp"]["artifact"] == {**rows["npu:qnn-htp"]["artifact"], "format": "onnx",
                                               "static_shapes": True}
    assert rows["npu:ethos-u55-256"]["artifact"]["io_dtype"] == "int8"
    assert main(["targets"]) == 0
    assert "npu:ethos-u85-256" in capsys.readouterr().out


def test_generic_names_resolve_to_the_first_available():
    from edgetl import targets
    from edgetl.errors import DeviceUnavailable

    assert targets.resolve("cpu").name == "cpu"
    found = {t.name: t.availability().level for t in targets.REGISTRY.values() if t.kind == "npu"}
    if "hardware" not in found.values():
        with pytest.raises(DeviceUnavailable, match="no npu target"):
            targets.resolve("npu")
    simulated = [n for n, level in found.items() if level in ("simulator", "estimator")]
    if simulated:
        assert targets.resolve("npu", ("hardware", "simulator", "estimator")).name == simulated[0]
    with pytest.raises(Exception, match="unknown target"):
        targets.get("npu:nope")


# -- exit 3 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["gpu:cuda", "gpu:tensorrt", "gpu:openvino", "gpu:litert", "npu:intel"])
def test_hardware_only_targets_exit_3_here(target, tmp_path, small_data, capsys):
    from edgetl import targets

    if targets.get(target).availability().level == "hardware":
        pytest.skip(f"{target} is present on this machine")
    code = main(["bench", str(tmp_path), "--target", target, "--data", str(small_data), "--out", str(tmp_path / "o"),
                 "--simulate"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert err.count("\n") == 1 and target in err


@pytest.mark.parametrize("target, hidden, extra", [("npu:qnn-htp", ["onnxruntime_qnn"], ".[qnn]"),
                                                   ("npu:ethos-u55-256", ["ethosu", "ethosu.vela"], ".[ethos-u]")])
def test_missing_tooling_exits_3_naming_the_extra(target, hidden, extra, tiny_model_dir, sample_dir, tmp_path,
                                                  monkeypatch, capsys):
    for module in hidden:  # as if the extra was not installed
        monkeypatch.setitem(sys.modules, module, None)
    code = main(["export", str(tiny_model_dir), "--out", str(tmp_path / "out"), "--target", target,
                 "--calib", str(sample_dir)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert extra in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


# -- Qualcomm HTP (simulator) ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qnn_export(tiny_model_dir, sample_dir, tmp_path_factory):
    pytest.importorskip("onnxruntime_qnn")
    from edgetl.exporting import ExportConfig, export

    out = tmp_path_factory.mktemp("targets") / "qnn"
    return export(ExportConfig(model=tiny_model_dir, out=out, calib=sample_dir, calib_size=16, target="npu:qnn-htp",
                               soc="SM8750", min_agreement=0.8, verbose=False))


def test_qnn_export_is_static_qdq_and_compiles_for_the_soc(qnn_export):
    import onnx

    qdq = qnn_export.out / "model_qnn_int8.onnx"
    ctx = qnn_export.out / "model_qnn_int8_sm8750_ctx.onnx"
    model = onnx.load(str(qdq))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 96, 96, 3]  # static, batch 1
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    compiled = onnx.load(str(ctx))
    assert [n.op_type for n in compiled.graph.node] == ["EPContext"]  # every node inside the context binary
    assert ctx.stat().st_size > 100_000

    sidecar = json.loads((qnn_export.out / (ctx.name + ".json")).read_text())
    target = sidecar["target"]
    assert target["soc"] == "SM8750" and target["nodes"]["on_cpu"] == 0
    assert target["nodes"]["on_npu"] == target["nodes"]["total"] > 100
    assert 0 < target["compile_seconds"] < 60
    assert sidecar["files"] == {ctx.name: sha256_file(ctx)}
    assert sidecar["input"]["shape"] == [1, 96, 96, 3]
    parity = sidecar["parity"]
    assert parity["evidence"] == "simulated" and "simulator" in parity["ran_on"]
    assert parity["n_images"] == 12 and parity["top1_agreement"] >= 0.8 and parity["cosine"] > 0.9
    # the HTP's fixed-point requantization is not ORT's CPU kernels (so not the CPU EP in disguise)
    assert 0 < parity["vs_cpu_qdq_max_abs_diff"] < 3.0
    assert target["simulator_wall_ms_per_image"]["evidence"] == "simulated"
    from edgetl.errors import DeviceUnavailable
    from edgetl.runtime.backends import open_backend, qnn_ep_devices, qnn_is_simulator

    if qnn_is_simulator(qnn_ep_devices()):  # the simulator never stands in for the device unasked
        with pytest.raises(DeviceUnavailable, match="simulator"):
            open_backend(ctx, "npu")
    cpu_sidecar = json.loads((qnn_export.out / (qdq.name + ".json")).read_text())
    assert cpu_sidecar["parity"]["evidence"] == "measured" and cpu_sidecar["target"]["compiled"] == ctx.name


def test_qnn_dynamic_batch_leaves_nodes_for_the_cpu(qnn_export, tmp_path):
    """The issue's finding: with a symbolic batch, ORT keeps shape nodes off the HTP; they are named."""
    import onnx
    from onnx import helper

    from edgetl.errors import CheckFailed
    from edgetl.exporting import qnn

    model = onnx.load(str(qnn_export.out / "model_qnn_int8.onnx"))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del model.graph.value_info[:]
    dynamic = tmp_path / "dynamic.onnx"
    onnx.save(model, str(dynamic))
    left = qnn.cpu_nodes(dynamic, "SM8750")
    if not left:
        pytest.skip("this onnxruntime-qnn takes the dynamic-batch graph whole")
    with pytest.raises(CheckFailed, match="--allow-cpu-fallback") as error:
        qnn.compile_context(dynamic, tmp_path / "ctx.onnx", "SM8750")
    assert left[0]["name"] in str(error.value)
    assert helper  # noqa: used for readability of the graph edit above


def test_qnn_bench_simulated_is_labelled_and_never_device_latency(qnn_export, small_data, tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", str(qnn_export.out), "--target", "npu:qnn-htp", "--data", str(small_data),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 3 and "--simulate" in err and err.count("\n") == 1
    assert main(["bench", str(qnn_export.out), "--target", "npu:qnn-htp", "--simulate", "--data", str(small_data),
                 "--out", str(out), "--runs", "3"]) == 0
    report = json.loads((out / "bench.json").read_text())
    _validate(report)
    assert report["target"] == "npu:qnn-htp" and report["mode"] == "simulate (simulator)"
    [entry] = report["artifacts"]  # the EPContext model; the QDQ source is not a target artifact
    assert entry["name"].endswith("_ctx.onnx")
    assert entry["evidence"]["accuracy"] == "simulated" and entry["evidence"]["latency_ms"] == "not measured"
    assert "skipped" in entry["latency_ms"]["1"]
    assert entry["placement"]["cpu_fallback_nodes"] == 0
    assert entry["vs_reference"]["top1_agreement"] >= 0.75
    row = next(r for r in report["rows"] if r["kind"] == "artifact")
    assert row["latency_p50_ms"] is None and row["latency_evidence"] == "not measured"
    assert row["accuracy_evidence"] == "simulated"
    markdown = (out / "report.md").read_text()
    assert "(simulated)" in markdown and "not device latency" in markdown
    assert "simulated" in (out / "report.html").read_text()
    mine = tmp_path / "mine"  # the same output-folder rule as a plain bench: a folder edgetl did not write stays
    (mine / "notes.txt").parent.mkdir()
    (mine / "notes.txt").write_text("keep")
    for extra in ([], ["--overwrite"]):
        assert main(["bench", str(qnn_export.out), "--target", "npu:qnn-htp", "--simulate", "--data",
                     str(small_data), "--out", str(mine), *extra]) == 2
        assert "not written by edgetl" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


# -- Arm Ethos-U (Vela) ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vela_export(tiny_model_dir, sample_dir, tmp_path_factory):
    pytest.importorskip("ethosu.vela")
    from edgetl.exporting import ExportConfig, export

    out = tmp_path_factory.mktemp("targets") / "u55"
    return export(ExportConfig(model=tiny_model_dir, out=out, calib=sample_dir, calib_size=16,
                               target="npu:ethos-u55-256", min_agreement=0.8, verbose=False))


def test_vela_compiles_every_op_to_the_npu_with_int8_io(vela_export):
    from ai_edge_litert.interpreter import Interpreter

    plain = vela_export.out / "model_tflite_int8_io8.tflite"
    compiled = vela_export.out / "model_ethos-u55-256_vela.tflite"
    interpreter = Interpreter(model_path=str(plain))
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    assert b"ethos-u" in compiled.read_bytes()
    sidecar = json.loads((vela_export.out / (compiled.name + ".json")).read_text())
    target = sidecar["target"]
    assert target["placement"]["cpu_ops"] == 0 and target["placement"]["npu_ops"] > 20
    assert 0 < target["compile_seconds"] < 60
    estimate = target["estimate"]
    assert estimate["evidence"] == "estimated"
    assert 0 < estimate["inference_ms"] < 100 and estimate["sram_kib"] > 0 and estimate["cycles_total"] > 0
    assert estimate["accelerator_configuration"] == "Ethos_U55_256"
    assert set(sidecar["files"]) == {compiled.name, "model_ethos-u55-256_vela_summary.csv"}
    assert sidecar["input"]["dtype"] == "int8" and sidecar["input"]["quantization"]["scale"] > 0
    parity = sidecar["parity"]
    assert parity["evidence"] == "simulated" and "BUILTIN_REF" in parity["ran_on"]
    assert parity["top1_agreement"] >= 0.8
    exact = parity["reference_vs_optimized_kernels"]
    assert 0 <= exact["identical_outputs"] <= 1 and exact["max_lsb_diff"] >= 0


def test_vela_names_ops_left_for_the_cpu(tmp_path):
    """A float model: Vela places nothing on the NPU; the ops are named, and only allowed on request."""
    pytest.importorskip("ethosu.vela")
    import keras
    import tensorflow as tf

    from edgetl.errors import CheckFailed
    from edgetl.exporting import vela

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="float_conv")(inputs))
    path = tmp_path / "float.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    with pytest.raises(CheckFailed, match="--allow-cpu-fallback"):
        vela.compile(path, tmp_path / "a", "ethos-u55-256")
    allowed = vela.compile(path, tmp_path / "b", "ethos-u55-256", allow_cpu_fallback=True)
    placement = allowed["placement"]
    assert placement["cpu_ops"] >= 1 and placement["npu_ops"] == 0
    assert placement["cpu"][0]["op_type"] == "CONV_2D" and "Float32" in placement["cpu"][0]["reason"]


def test_vela_bench_estimates_and_simulates(vela_export, small_data, tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", str(vela_export.out), "--target", "npu:ethos-u55-256", "--simulate",
                 "--data", str(small_data), "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    _validate(report)
    [entry] = report["artifacts"]
    assert entry["evidence"]["latency_ms"] == "estimated" and entry["evidence"]["accuracy"] == "simulated"
    estimate = entry["npu"]["estimate"]
    row = next(r for r in report["rows"] if r["kind"] == "artifact")
    assert row["latency_p50_ms"] == pytest.approx(estimate["inference_ms"])
    assert row["latency_evidence"] == "estimated"
    assert entry["placement"]["nodes"]["CPU"] == 0
    markdown = (out / "report.md").read_text()
    assert "(estimated" in markdown and "KiB (estimated)" in markdown


def test_plain_cpu_bench_skips_compiled_models_and_runs_int8_io(vela_export, small_data, tmp_path):
    from edgetl.benchmark import BenchConfig, bench

    result = bench(BenchConfig(artifacts=[vela_export.out], data=small_data, out=tmp_path / "cpu", runs=2,
                               warmup=1, batch_sizes=(1,), measure_overhead=False))
    names = [entry["name"] for entry in result.json["artifacts"]]
    assert names == ["model_tflite_int8_io8.tflite"]  # the ethos-u custom-op model needs the NPU driver
    row = result.rows[0]
    assert row["latency_evidence"] == "measured" and row["latency_p50_ms"] > 0
    assert row["agreement"] >= 0.75
    # ... and is listed as not benched, with the one line the runtime says when asked to run it on a CPU
    from edgetl.errors import UsageError
    from edgetl.runtime import EdgeModel

    (skipped,) = result.json["not_benched"]
    assert skipped["name"].endswith("_vela.tflite") and skipped["format"] == "tflite"
    assert "is compiled for npu:ethos-u55-256 (Vela " in skipped["reason"]
    assert "runs only there, not on a CPU: its uncompiled model model_tflite_int8_io8.tflite" in skipped["reason"]
    with pytest.raises(UsageError) as raised:
        EdgeModel.load(skipped["path"])
    assert str(raised.value) == skipped["reason"]
