"""`edgetl search` on Ray: a tiny real search (EfficientNet-Lite0 at 96 px, sparsity 0/0.5 x fp32/dynamic
ONNX) on in-process Ray, its Pareto front and winner; resume after a lost stage; failing trials; a
two-node cluster on a loopback address where the benches land on the node offering the target."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("ray")

from edgetl.cli import main  # noqa: E402
from edgetl.search import front, halving  # noqa: E402

AXES = ["--backbones", "efficientnet_lite0", "--strategies", "features", "--sparsity", "0,0.5",
        "--quantize", "fp32,dynamic", "--formats", "onnx", "--epochs", "1", "--prune-epochs", "0",
        "--input-size", "96", "--runs", "3"]


def _trials(out: Path) -> dict:
    return json.loads((out / "trials.json").read_text())


def _stage_records(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "stages").glob("*/*/stage.json")}


@pytest.fixture(scope="module")
def searched(tmp_path_factory, sample_dir):
    out = tmp_path_factory.mktemp("search") / "out"
    args = ["search", str(sample_dir), "--out", str(out), *AXES]
    assert main(args) == 0
    return out, args


def test_halving_and_front_rules():
    rung = [{"id": "a", "val_accuracy": 0.90, "params": 100}, {"id": "b", "val_accuracy": 0.80, "params": 120},
            {"id": "c", "val_accuracy": 0.70, "params": 50}, {"id": "d", "val_accuracy": 0.60, "params": 200}]
    stopped = halving(rung, eta=2)
    assert set(stopped) == {"b", "d"}  # dominated by a and outside the top 2; c is on the front
    assert "dominated" in stopped["b"] and "by a" in stopped["b"]
    assert halving(rung, eta=1) == {}
    rows = [{"trial": "x", "top1": 0.9, "latency_p50_ms": 2.0, "size_bytes": 10},
            {"trial": "y", "top1": 0.9, "latency_p50_ms": 1.0, "size_bytes": 10},
            {"trial": "z", "top1": 0.8, "latency_p50_ms": 0.5, "size_bytes": 20}]
    assert [r["trial"] for r in front(rows)] == ["y", "z"]


def test_tiny_search_front_and_winner(searched, sample_dir):
    from edgetl.metadata import verify_artifact
    from edgetl.runtime import EdgeModel

    out, _ = searched
    report = _trials(out)
    trials = report["trials"]
    assert len(trials) == 4 and {t["status"] for t in trials} <= {"done", "pruned"}
    done = [t for t in trials if t["status"] == "done"]
    assert len(done) >= 2  # halving never stops the rung's best branch
    for t in done:
        assert 0.0 <= t["top1"] <= 1.0 and t["latency_p50_ms"] > 0 and t["size_bytes"] > 100_000
        assert len(t["node"]) >= 20
    for t in trials:
        if t["status"] == "pruned":
            assert t["reason"].startswith("dominated at the prune")
    # One fine-tune feeds both sparsities, one pruned model feeds both quantizations.
    assert len(list((out / "stages" / "finetune").iterdir())) == 1
    assert len(list((out / "stages" / "prune").iterdir())) == 1
    assert len(list((out / "stages" / "bench").iterdir())) == len(done)
    assert report["counts"] == {"done": len(done), "failed": 0, "pruned": 4 - len(done)}

    # Every bench timed the target's anchor (no INT8 trial: the first trial) in the same rounds as its own
    # artifact; the front and the winner rank on that relative latency, the absolute p50 stays.
    for t in done:
        assert t["latency_vs_anchor_low"] <= t["latency_vs_anchor"] <= t["latency_vs_anchor_high"], t
        assert t["top1_low"] <= t["top1"] <= t["top1_high"], t
    anchors = [t for t in done if (t["latency_vs_anchor_low"], t["latency_vs_anchor_high"]) == (1.0, 1.0)]
    # The anchor against itself: the first unpruned INT8 trial that reached the bench, else the first one
    # (which branch survives halving depends on the accuracies; the rule does not).
    rule = next((t for t in done if t["sparsity"] == 0 and t["quantize"] == "int8"), done[0])
    assert [t["trial"] for t in anchors] == [rule["trial"]]
    key = "latency_vs_anchor"
    pareto = json.loads((out / "pareto.json").read_text())["targets"]["cpu"]
    expected = [t["trial"] for t in done if not any(
        o["top1"] >= t["top1"] and o[key] <= t[key] and o["size_bytes"] <= t["size_bytes"]
        and (o["top1"], o[key], o["size_bytes"]) != (t["top1"], t[key], t["size_bytes"])
        for o in done)]
    assert [r["trial"] for r in pareto["front"]] == expected
    fastest = min(done, key=lambda t: (t[key], t["size_bytes"], -t["top1"], t["trial"]))
    assert pareto["winner"]["trial"] == fastest["trial"]  # no constraints: the fastest finished trial
    assert "relative to the target's anchor" in pareto["winner_rule"]
    shipped = Path(pareto["winner_dir"])
    artifact = next(shipped.glob("*.onnx"))
    verify_artifact(artifact)  # the sidecar's hashes hold for the copy
    ranked = EdgeModel.load(artifact).predict(next((sample_dir / "ants").iterdir()), top_k=2)
    assert {label for label, _ in ranked} == {"ants", "bees"}
    assert "data:image/png;base64," in (out / "pareto.html").read_text()


def test_rerun_resumes_from_finished_stages(searched):
    out, args = searched
    before = _trials(out)
    lost = sorted((out / "stages" / "bench").iterdir())[0]
    shutil.rmtree(lost)  # as if the driver was killed while this bench ran
    records = _stage_records(out)
    assert main(args) == 0
    after = _trials(out)
    assert after["stages_built"] == 1  # only the lost bench; nothing retrained or re-exported
    assert {k: v for k, v in _stage_records(out).items() if "bench" not in k} == {
        k: v for k, v in records.items() if "bench" not in k}
    assert [(t["trial"], t["status"]) for t in after["trials"]] == [(t["trial"], t["status"]) for t in before["trials"]]


def test_failing_trials_are_recorded_and_the_search_goes_on(searched, tmp_path, sample_dir):
    source, _ = searched
    out = tmp_path / "out"
    shutil.copytree(source, out)
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"points": [
        {"backbone": "no_such_net", "strategy": "features", "sparsity": 0, "quantize": "fp32", "format": "onnx"},
        {"backbone": "efficientnet_lite0", "strategy": "features", "sparsity": 0, "quantize": "int4", "format": "onnx"}]}))
    assert main(["search", str(sample_dir), "--out", str(out), *AXES, "--space", str(space)]) == 0
    trials = {t["trial"]: t for t in _trials(out)["trials"]}
    assert len(trials) == 6
    unknown = trials["no_such_net/features/sp0/onnx/fp32@cpu"]
    assert unknown["status"] == "failed" and unknown["reason"].startswith("finetune: UsageError: unknown backbone")
    bad = trials["efficientnet_lite0/features/sp0/onnx/int4@cpu"]
    assert bad["status"] == "failed" and "unknown quantization 'int4'" in bad["reason"]
    assert sum(t["status"] == "done" for t in trials.values()) >= 2


def _unavailable_target() -> str | None:
    from edgetl import targets

    return next((n for n in ("gpu:cuda", "npu:intel", "gpu:openvino") if not targets.get(n).availability().available),
                None)


def test_named_npu_target_estimated_by_vela(searched, tmp_path, sample_dir):
    """--target npu:ethos-u55-128: exported as `export --target` does (Vela), benched as `bench --target
    --simulate` does; the estimated latency keeps its label through the trial rows, the front and the
    winner. A target with no device here fails its trials with the one-line reason; the search goes on."""
    pytest.importorskip("ethosu.vela")
    from edgetl.metadata import verify_artifact

    target = "npu:ethos-u55-128"
    source, _ = searched
    out = tmp_path / "out"
    shutil.copytree(source, out)  # the fine-tune and the pruned model are reused
    missing = _unavailable_target()
    extra = ["--target", missing] if missing else []
    code = main(["search", str(sample_dir), "--out", str(out), *AXES, "--eta", "1", "--target", target, *extra])
    assert code == (1 if missing else 0)  # exit 1: a target without a winner, after everything is written
    report = _trials(out)
    trials = {t["trial"]: t for t in report["trials"]}
    mine = [t for t in trials.values() if t["target"] == target]
    # fp32 and dynamic collapse into the one full-integer int8 model Vela compiles
    assert {t["trial"] for t in mine} == {f"efficientnet_lite0/features/sp{s}/tflite/int8@{target}"
                                          for s in ("0", "0.5")}
    assert {t["status"] for t in mine} == {"done"}
    assert report["stages_built"] == 4  # an export and a bench per sparsity; fine-tune and prune reused
    for t in mine:
        estimate = t["npu_estimate"]
        assert t["latency_evidence"] == "estimated" and estimate["evidence"] == "estimated"
        assert t["accuracy_evidence"] == "simulated" and t["target_level"] == "estimator"
        assert t["latency_p50_ms"] == pytest.approx(estimate["inference_ms"]) and 0 < t["latency_p50_ms"] < 1000
        assert estimate["sram_kib"] > 0 and estimate["cycles_total"] > 0
        assert 0.0 <= t["top1"] <= 1.0 and t["agreement"] >= 0.5 and t["size_bytes"] > 100_000
        assert t["stages"]["export"]["target"] == target and t["stages"]["export"]["artifact"].endswith("_vela.tflite")
    # The device-farm rule: the target's export (it needs Vela) and its bench ask for target:<name>.
    from edgetl.search.stages import bench_job, export_job

    [splits] = (out / "stages" / "data").iterdir()
    model = Path(mine[0]["stages"]["prune"]["directory"])
    export = export_job(out, model, splits, "tflite", "int8", "export", target)
    assert export.finished() and export.resources == {f"target:{target}": 1}  # the stage this search built
    assert bench_job(out, model, export, splits, target, 3, "bench").resources == {f"target:{target}": 1}
    assert export_job(out, model, splits, "onnx", "fp32", "export").resources == {}  # cpu exports go anywhere
    if missing:
        failed = [t for t in trials.values() if t["target"] == missing]
        assert failed and {t["status"] for t in failed} == {"failed"}
        assert all(t["reason"].startswith("target: DeviceUnavailable: ") and "\n" not in t["reason"] for t in failed)

    pareto = json.loads((out / "pareto.json").read_text())["targets"]
    entry = pareto[target]
    assert entry["evidence"] == {"latency": ["estimated"], "accuracy": ["simulated"]}
    assert all(r["latency_evidence"] == "estimated" for r in entry["front"])
    fastest = min(mine, key=lambda t: (t["latency_p50_ms"], t["size_bytes"]))
    assert entry["winner"]["trial"] == fastest["trial"] and "(latency estimated)" in entry["winner_rule"]
    shipped = Path(entry["winner_dir"])
    compiled = next(shipped.glob("*_vela.tflite"))
    verify_artifact(compiled)  # its summary CSV came along
    verify_artifact(shipped / "model_tflite_int8_io8.tflite")  # and the uncompiled model the simulation runs
    if missing:
        assert pareto[missing]["winner"] is None and pareto[missing]["front"] == []
    assert "estimated" in (out / "pareto.html").read_text()


def test_named_npu_target_on_the_qnn_simulator(searched, tmp_path, sample_dir):
    """--target npu:qnn-htp: the EPContext model runs on Qualcomm's HTP simulator; its accuracy is
    labelled simulated, no device latency is claimed, and the winner is ranked without one."""
    pytest.importorskip("onnxruntime_qnn")
    from edgetl import targets
    from edgetl.metadata import verify_artifact

    target = "npu:qnn-htp"
    if targets.get(target).availability().level != "simulator":
        pytest.skip("no QNN HTP simulator here (or a real Hexagon NPU)")
    source, _ = searched
    out = tmp_path / "out"
    shutil.copytree(source, out)
    assert main(["search", str(sample_dir), "--out", str(out), *AXES, "--sparsity", "0", "--target", target]) == 0
    [trial] = _trials(out)["trials"]
    assert trial["trial"] == f"efficientnet_lite0/features/sp0/onnx/int8@{target}" and trial["status"] == "done"
    assert trial["accuracy_evidence"] == "simulated" and trial["target_level"] == "simulator"
    assert trial["latency_p50_ms"] is None and trial["latency_evidence"] == "not measured"
    wall = trial["simulator_wall_ms_per_image"]
    assert wall["evidence"] == "simulated" and wall["value"] > 0
    assert 0.0 <= trial["top1"] <= 1.0 and trial["agreement"] >= 0.5
    assert trial["stages"]["export"]["artifact"].endswith("_ctx.onnx")
    entry = json.loads((out / "pareto.json").read_text())["targets"][target]
    assert entry["evidence"] == {"latency": ["not measured"], "accuracy": ["simulated"]}
    assert entry["winner"]["trial"] == trial["trial"] and "no latency measured" in entry["winner_rule"]
    shipped = Path(entry["winner_dir"])
    verify_artifact(next(shipped.glob("*_ctx.onnx")))
    verify_artifact(shipped / "model_qnn_int8.onnx")  # the QDQ source, for any ONNX Runtime
    page = (out / "pareto.html").read_text()
    assert "<td>not measured</td>" in page and "<td>simulated</td>" in page


@pytest.fixture
def two_node_cluster():
    """A head (1 CPU, no target) and a node offering target:cpu, on a loopback address; both stopped
    (by their process groups) when the test ends, passed or not."""
    from edgetl.search.cluster import LocalCluster

    with LocalCluster(head_cpus=1) as cluster:
        node = cluster.add_node(num_cpus=1, resources={"target:cpu": 1})
        assert cluster.node_with("target:cpu") == [node]
        yield cluster.address, node


def test_benches_land_on_the_node_offering_the_target(searched, two_node_cluster, tmp_path, sample_dir):
    address, target_node = two_node_cluster
    source, _ = searched
    out = tmp_path / "out"
    shutil.copytree(source, out)
    shutil.rmtree(out / "stages" / "bench")  # the benches run again, now on the cluster
    assert main(["search", str(sample_dir), "--out", str(out), *AXES, "--address", address]) == 0
    report = _trials(out)
    done = [t for t in report["trials"] if t["status"] == "done"]
    assert done and report["stages_built"] == len(done)  # only the benches; fine-tune/prune/export reused
    assert {t["node"] for t in done} == {target_node}
    assert {t["stages"]["bench"]["node"] for t in done} == {target_node}


def test_bad_arguments_fail_in_one_line_before_ray(sample_dir, tmp_path, capsys):
    out = tmp_path / "out"
    space = tmp_path / "space.json"
    space.write_text('{"backbone": ["x"]}')
    for extra, message in ((["--formats", "onx"], "unknown format 'onx'"), (["--sparsity", "half"], "--sparsity"),
                           (["--space", str(space)], "unknown key 'backbone'"), (["--eta", "0"], "--eta"),
                           (["--target", "npu:nope"], "unknown target 'npu:nope'"),
                           (["--target", "gpu:keras"], "runs the keras model itself"),
                           (["--prune-loss", "hints"], "unknown --prune-loss 'hints'")):
        assert main(["search", str(sample_dir), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert main(["search", str(sample_dir), "--out", str(sample_dir / "ants")]) == 2  # inside an input
    from edgetl.search.cluster import LOOPBACK, free_port

    nobody = f"{LOOPBACK}:{free_port()}"  # nothing listens there: one line at once, not Ray's minutes of retries
    assert main(["search", str(sample_dir), "--out", str(out), "--address", nobody]) == 2
    assert "no Ray cluster answers there" in capsys.readouterr().err
    assert not out.exists()


def test_input_sizes_are_an_axis_keyed_into_the_finetune_stage(tmp_path, sample_dir):
    """--input-sizes multiplies the points; each size is its own fine-tune branch (its own stage key, the
    size in the trial name), except the backbone's own size, which keys like a search naming no size."""
    from edgetl.search import SearchConfig
    from edgetl.search.driver import finetune_options
    from edgetl.search.stages import finetune_job

    space = tmp_path / "space.json"
    space.write_text('{"input_sizes": [224, 176]}')
    config = SearchConfig(data=sample_dir, out=tmp_path / "out", sparsity=(0, 0.5), quantize=("int8",),
                          formats=("tflite",), space=space)
    points = config.points()
    assert [p.name for p in points] == [
        f"efficientnet_lite0/features/{s}px/sp{sp}/tflite/int8" for s in (224, 176) for sp in ("0", "0.5")]
    assert SearchConfig(data=sample_dir, out=tmp_path, input_sizes=(224, 176)).points()[0].input_size == 224
    keys = {p.input_size: finetune_job(tmp_path, tmp_path, "split", finetune_options(config, p), p.branch, 0).key
            for p in points}
    plain = SearchConfig(data=sample_dir, out=tmp_path / "out", quantize=("int8",)).points()[0]
    assert plain.name == "efficientnet_lite0/features/sp0/onnx/int8" and plain.input_size is None
    assert keys[224] == finetune_job(tmp_path, tmp_path, "split", finetune_options(config, plain), "", 0).key
    assert keys[176] != keys[224]
    assert [finetune_options(config, p)["input_size"] for p in points] == [None, None, 176, 176]
    single = SearchConfig(data=sample_dir, out=tmp_path, quantize=("int8",), input_size=96)  # --input-size alone: names and keys as before
    assert single.points()[0].name == plain.name and finetune_options(single, single.points()[0])["input_size"] == 96
    assert main(["search", str(sample_dir), "--out", str(tmp_path / "o"), "--input-sizes", "224,big"]) == 2
