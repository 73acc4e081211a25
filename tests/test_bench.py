"""`edgetl bench` on artifacts exported in the test from the tiny model: report contents vs direct
computation, schema, exit codes (3 no device, 1 corrupt artifact, 2 existing --out)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgetl.cli import main
from edgetl.metadata import read_sidecar, sha256_file, sidecar_path, write_json

SCHEMA = Path(__file__).resolve().parents[1] / "edgetl" / "schemas" / "bench.schema.json"
# The bf16 row and benchmark_app are exercised in test_profile.py; here one row per artifact file.
RUNS = dict(runs=5, warmup=1, batch_sizes=(1, 4), openvino_native_precision=False, benchmark_app_seconds=0)
ONNX, TFLITE, XML, INT8 = ("model_onnx_fp32.onnx", "model_tflite_fp32.tflite", "model_openvino_fp32.xml",
                           "model_tflite_int8_u8.tflite")


@pytest.fixture(scope="module")
def artifacts_dir(lite0_matrix, lite0_u8, artifact_subset) -> Path:
    """FP32 onnx + tflite + openvino (sidecars and parity included), plus one INT8 uint8-input TFLite
    artifact so the uint8-pixel path and the ratios vs FP32 are exercised: copies of conftest's exports."""
    return artifact_subset("bench", {lite0_matrix.out: [ONNX, TFLITE, XML], lite0_u8.out: [INT8]})


@pytest.fixture(scope="module")
def small_data(sample_subset) -> Path:
    """5 images per class keeps the accuracy pass and the reference quick."""
    return sample_subset(5)


@pytest.fixture(scope="module")
def result(artifacts_dir, small_data, tmp_path_factory):
    from edgetl.benchmark import BenchConfig, bench

    out = tmp_path_factory.mktemp("bench") / "report"
    return bench(BenchConfig(artifacts=[artifacts_dir], data=small_data, out=out, **RUNS))


def test_report_validates_against_schema(result):
    import jsonschema

    from edgetl.benchmark import bench_schema

    on_disk = json.loads((result.out / "bench.json").read_text())
    assert bench_schema() == json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(bench_schema())
    jsonschema.validate(on_disk, bench_schema())
    assert on_disk["schema"] == "edgetl.bench/2"
    assert [a["name"] for a in on_disk["artifacts"]] == [ONNX, XML, TFLITE, INT8]  # sorted by name
    # one row per artifact x batch size, plus the reference per batch size
    assert len(on_disk["rows"]) == 4 * 2 + 2
    for entry in on_disk["artifacts"]:
        for size in ("1", "4"):
            timing = entry["latency_ms"][size]
            assert len(timing["times_ms"]) == RUNS["runs"]
            assert timing["min"] <= timing["p50"] <= timing["p90"] <= timing["p99"]
            assert timing["p50"] == pytest.approx(float(np.median(timing["times_ms"])))
        assert entry["size"]["bytes"] > 100_000 and 0 < entry["size"]["gzip_bytes"] <= entry["size"]["bytes"] * 1.01
        assert entry["load_ms"] > 0 and entry["memory"]["peak_rss_mb"] > 0
        assert entry["placement"]["cpu_fallback_nodes"] == 0 and sum(entry["placement"]["nodes"].values()) > 10
    xml = next(e for e in on_disk["artifacts"] if e["format"] == "openvino")
    assert xml["files"] == [XML, "model_openvino_fp32.bin"]
    assert xml["size"]["bytes"] == sum((Path(xml["path"]).parent / f).stat().st_size for f in xml["files"])
    int8 = next(e for e in on_disk["artifacts"] if e["name"] == INT8)
    assert int8["input_dtype"] == "uint8" and int8["quantization"] == "int8"
    from edgetl.runtime.cpu import int8_dot_saturates

    settings = {e["format"]: e["runtime_settings"] for e in on_disk["artifacts"]}
    assert settings["onnx"] == ({"session.x64quantprecision": "1"} if int8_dot_saturates() else {})
    assert settings["openvino"] == {"INFERENCE_PRECISION_HINT": "f32"} and settings["tflite"] == {}
    assert on_disk["reference"]["device"] in ("CPU",) or on_disk["reference"]["device"].startswith("GPU")
    assert set(on_disk["machine"]["isa"]) >= {"avx2", "avx512f", "avx512_vnni", "amx_int8", "arm_dotprod"}
    overhead = on_disk["harness_overhead"]
    assert overhead["bare_loop_ms"] > 0 and 0 <= overhead["bookkeeping_pct"] < 3


def test_accuracy_equals_direct_computation(result, artifacts_dir, small_data):
    from edgetl.data import load_inputs, load_pixels, scan_folder
    from edgetl.preprocess import Preprocessing
    from edgetl.runtime.backends import open_backend

    images = scan_folder(small_data)
    reference_top1 = result.json["reference"]["accuracy"]["top1"]
    for entry in result.json["artifacts"]:
        path = Path(entry["path"])
        sidecar = read_sidecar(path)
        recipe = Preprocessing.from_dict(sidecar["preprocessing"])
        uint8 = sidecar["input"]["dtype"] == "uint8"
        inputs = load_pixels(images.paths, recipe) if uint8 else load_inputs(images.paths, recipe)
        logits = open_backend(path).run(inputs)
        truth = np.asarray([sidecar["labels"].index(images.classes[i]) for i in images.labels])
        predicted = logits.argmax(1)
        assert entry["accuracy"]["top1"] == pytest.approx(float(np.mean(predicted == truth)))
        assert entry["accuracy"]["top5_k"] == 2 and entry["accuracy"]["top5"] == 1.0  # clipped to 2 classes
        confusion = np.zeros((2, 2), int)
        for t, p in zip(truth, predicted):
            confusion[t, p] += 1
        assert entry["accuracy"]["confusion"] == confusion.tolist()
        assert entry["accuracy"]["n_images"] == 10
        # Against the Keras reference on the same images: each image an artifact decides differently moves
        # its accuracy by at most one image; the FP32 ones decide every image as Keras does.
        flips = round((1 - entry["vs_reference"]["top1_agreement"]) * 10)
        assert abs(entry["accuracy"]["top1"] - reference_top1) <= flips / 10 + 1e-9, entry["name"]
        if entry["quantization"] == "none":
            assert entry["accuracy"]["top1"] == reference_top1 and flips == 0, entry["name"]
    assert reference_top1 >= 0.7  # the trained tiny model, far above chance on its own sample


def test_interleaved_rounds_paired_ratios_and_accuracy_intervals(result):
    from edgetl.metrics import exact_mcnemar, wilson_interval
    from edgetl.timing import paired_ratio

    report = result.json
    by_name = {e["name"]: e for e in report["artifacts"]}
    reference = report["reference"]
    for size in ("1", "4"):
        # rounds of 2 timed calls (after an untimed one) of every artifact and the reference: all keep
        # --runs times, and one median per round, paired by index
        assert len(reference["latency_ms"][size]["times_ms"]) == RUNS["runs"]
        assert len(reference["latency_ms"][size]["round_ms"]) == 3  # 5 runs: 2 + 2 + 1
        fp32, int8 = (by_name[n]["latency_ms"][size] for n in (TFLITE, INT8))
        assert int8["round_ms"][0] == pytest.approx(float(np.median(int8["times_ms"][:2])))
        assert int8["vs_fp32"] == paired_ratio(fp32["round_ms"], int8["round_ms"])
        assert int8["vs_fp32"]["low"] <= int8["vs_fp32"]["ratio"] <= int8["vs_fp32"]["high"]
        assert fp32["vs_fp32"]["ratio"] == fp32["vs_fp32"]["low"] == fp32["vs_fp32"]["high"] == 1.0
        assert int8["vs_reference"] == paired_ratio(reference["latency_ms"][size]["round_ms"], int8["round_ms"])
        row = next(r for r in result.rows if r["artifact"] == INT8 and r["batch_size"] == int(size))
        assert (row["speedup_vs_fp32"], row["speedup_vs_fp32_low"], row["speedup_vs_fp32_high"]) == (
            int8["vs_fp32"]["ratio"], int8["vs_fp32"]["low"], int8["vs_fp32"]["high"])
    n = report["data"]["n_images"]
    assert reference["accuracy"]["interval"] == pytest.approx(
        list(wilson_interval(round(reference["accuracy"]["top1"] * n), n)))
    for entry in report["artifacts"]:
        accuracy, vs = entry["accuracy"], entry["vs_reference_accuracy"]
        low, high = accuracy["interval"]
        assert low <= accuracy["top1"] <= high and high - low > 0.2  # 10 images: a wide interval
        # the flips are the images exactly one of the two gets right; they move top-1 by (gained - lost) / n
        assert vs["flips"] == vs["lost"] + vs["gained"] <= round((1 - entry["vs_reference"]["top1_agreement"]) * n)
        assert accuracy["top1"] - reference["accuracy"]["top1"] == pytest.approx(vs["change"])
        assert vs["mcnemar_p"] == exact_mcnemar(vs["lost"], vs["gained"])
        assert vs["change_interval"][0] <= vs["change"] <= vs["change_interval"][1]
        classes = accuracy["per_class"]
        assert set(classes) == {"ants", "bees"} and sum(c["support"] for c in classes.values()) == n
        for name, figures in classes.items():
            ref = reference["accuracy"]["per_class"][name]
            assert figures["recall_change"] == pytest.approx(figures["recall"] - ref["recall"])
        if entry["quantization"] == "none":  # the FP32 artifact of its format: nothing to compare with
            assert entry["vs_fp32_accuracy"] is None
    assert by_name[INT8]["vs_fp32_accuracy"]["n_images"] == n
    parity = read_sidecar(Path(by_name[INT8]["path"]))["parity"]  # export's parity block: the same metrics
    assert parity["accuracy_interval"][0] <= parity["accuracy"] <= parity["accuracy_interval"][1]
    assert parity["vs_reference_accuracy"]["mcnemar_p"] == pytest.approx(
        exact_mcnemar(parity["vs_reference_accuracy"]["lost"], parity["vs_reference_accuracy"]["gained"]), abs=1e-6)
    recommendation = report["recommendation"]
    assert recommendation["artifact"] in by_name and "95% interval" in recommendation["rule"]


def test_fp32_artifacts_agree_with_reference(result):
    for entry in result.json["artifacts"]:
        vs = entry["vs_reference"]
        if entry["quantization"] != "none":
            # The bench images are 10 of the export's 60 check images: it cannot find more disagreements
            # with Keras than the export's parity check recorded in the sidecar.
            parity = read_sidecar(Path(entry["path"]))["parity"]
            assert parity["n_images"] == 60 and parity["top1_agreement"] >= 0.95
            flips = round((1 - parity["top1_agreement"]) * parity["n_images"])
            assert vs["space"] == "logits" and vs["n_images"] == 10
            assert vs["top1_agreement"] >= 1 - flips / vs["n_images"] - 1e-9, (vs, parity)
            assert vs["cosine_mean"] > 0.95 and vs["cosine_min"] > 0.9, vs
            continue
        assert vs["space"] == "logits"  # logits artifacts compared with the Keras logits layer
        assert vs["top1_agreement"] == 1.0
        assert vs["cosine_mean"] > 0.9999 and vs["max_abs_diff"] < 1e-3
    row = next(r for r in result.rows if r["format"] == "onnx" and r["batch_size"] == 1)
    assert row["agreement"] == 1.0 and row["speedup_vs_fp32"] == 1.0
    fp32, int8 = (next(r for r in result.rows if r["artifact"] == name and r["batch_size"] == 1)
                  for name in (TFLITE, INT8))
    assert int8["agreement"] == next(e for e in result.json["artifacts"]
                                     if e["name"] == INT8)["vs_reference"]["top1_agreement"]
    assert int8["size_ratio_vs_fp32"] == pytest.approx(int8["size_bytes"] / fp32["size_bytes"]) and \
        int8["size_ratio_vs_fp32"] < 0.5


def test_report_files(result):
    for name in ("bench.json", "bench.csv", "report.md", "report.html"):
        assert (result.out / name).stat().st_size > 0
    html = (result.out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3  # scatter, box plot, confusion matrices
    markdown = (result.out / "report.md").read_text()
    assert markdown == result.markdown
    assert "fastest artifact within 1 point of reference accuracy: model_" in markdown
    for name in (f"## {ONNX}", f"## {TFLITE}", f"## {XML}", f"## {INT8}", "speed vs FP32 [95% CI]",
                 "top-1 [95% CI]", "flips, McNemar p", "per class (precision / recall", "(rule: "):
        assert name in markdown
    csv_lines = (result.out / "bench.csv").read_text().splitlines()
    assert csv_lines[0].startswith("artifact,kind,backbone,format") and len(csv_lines) == 1 + len(result.rows)


@pytest.mark.parametrize("target", ["gpu", "npu"])
def test_unavailable_target_exits_3_listing_devices(target, artifacts_dir, small_data, tmp_path, capsys):
    from edgetl.runtime.backends import available_devices

    if all(devices for devices in _target_devices(target).values()):
        pytest.skip(f"this machine has a {target} for every runtime")
    code = main(["bench", str(artifacts_dir), "--target", target, "--data", str(small_data),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 3
    assert len(err.splitlines()) == 1 and "available:" in err and "Traceback" not in err
    assert "CPUExecutionProvider" in err and "CPU" in available_devices()["openvino"]
    assert not (tmp_path / "out").exists()


def _target_devices(target):
    from edgetl.benchmark import target_devices

    return target_devices(target)


@pytest.mark.parametrize("matching_hash", [False, True])
def test_corrupt_artifact_is_one_line_exit_1(matching_hash, artifacts_dir, small_data, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    copy = broken / ONNX
    shutil.copy(sidecar_path(artifacts_dir / ONNX), sidecar_path(copy))
    copy.write_bytes(np.random.default_rng(0).bytes(4096))
    if matching_hash:  # sidecar rewritten to match: now open_backend itself must refuse the file
        write_json(sidecar_path(copy), {**read_sidecar(copy), "sha256": sha256_file(copy),
                                        "files": {ONNX: sha256_file(copy)}})
    code = main(["bench", str(copy), "--data", str(small_data), "--out", str(tmp_path / "out"),
                 "--runs", "1", "--warmup", "0", "--batch-sizes", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and ONNX in err
    assert ("onnxruntime cannot load it" if matching_hash else "sha256") in err
    assert not (tmp_path / "out").exists()


def test_existing_out_refused_without_overwrite(artifacts_dir, small_data, tmp_path, capsys):
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "keep.txt").write_text("previous results")
    args = ["bench", str(artifacts_dir / TFLITE), "--data", str(small_data),
            "--runs", "2", "--warmup", "0", "--batch-sizes", "2"]
    for extra in ([], ["--overwrite"]):  # a folder edgetl did not write is never replaced
        assert main(args + ["--out", str(unrelated), *extra]) == 2
        assert "not written by edgetl" in capsys.readouterr().err
    assert (unrelated / "keep.txt").read_text() == "previous results"
    out = tmp_path / "out"
    assert main(args + ["--out", str(out)]) == 0
    capsys.readouterr()
    assert main(args + ["--out", str(out)]) == 2  # its own earlier report: only with --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--out", str(out), "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert f"## {TFLITE}" in printed and "fastest artifact within 1 point" in printed
    assert (out / "bench.json").exists()


def test_runtime_filter_and_bad_arguments(artifacts_dir, small_data, tmp_path):
    from edgetl.benchmark import expand_artifacts
    from edgetl.errors import UsageError

    assert [a.name for a in expand_artifacts([artifacts_dir])] == [ONNX, XML, TFLITE, INT8]
    assert [a.name for a in expand_artifacts([artifacts_dir], "openvino")] == [XML]
    with pytest.raises(UsageError, match="cannot run on --runtime onnxruntime"):
        expand_artifacts([artifacts_dir / TFLITE], "onnxruntime")
    assert main(["bench", str(artifacts_dir), "--data", str(small_data), "--out", str(tmp_path / "o"),
                 "--batch-sizes", "1,x"]) == 2
    assert main(["bench", str(artifacts_dir), "--data", str(small_data), "--out", str(tmp_path / "o"),
                 "--target", "tpu"]) == 2


def test_cpu_fallback_is_reported_and_strict_refuses(caplog):
    from edgetl.benchmark import BenchConfig, check_placement
    from edgetl.benchmark import Artifact
    from edgetl.errors import CheckFailed

    artifact = Artifact(Path("model.onnx"), {}, "model.onnx")
    # what node_placement reports for an ORT session where the CUDA EP left 3 nodes to the CPU EP
    placement = {"requested": "gpu", "devices": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                 "nodes": {"CUDA": 60, "CPU": 3}, "method": "onnxruntime profiling", "verified": True,
                 "cpu_fallback_nodes": 3}
    config = BenchConfig(artifacts=["model.onnx"], data=Path("."), out=Path("out"), target="gpu")
    check_placement(artifact, placement, config)
    assert "3 of 63 nodes run on the CPU" in caplog.text
    with pytest.raises(CheckFailed, match="--strict: model.onnx on --target gpu: 3 of 63 nodes"):
        check_placement(artifact, placement, BenchConfig(**{**config.__dict__, "strict": True}))
    unverified = {**placement, "nodes": {}, "cpu_fallback_nodes": 0, "verified": False, "method": "unverifiable"}
    with pytest.raises(CheckFailed, match="cannot be verified"):
        check_placement(artifact, unverified, BenchConfig(**{**config.__dict__, "strict": True}))
