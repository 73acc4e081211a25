"""The figures a person decides from on a busy machine: accuracy intervals and McNemar (checked against
scipy), paired latency ratios with their bootstrap interval, and a bench of two artifacts of known,
different cost while two busy processes load both cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgetl import metrics
from edgetl.timing import paired_ratio


def test_wilson_and_exact_mcnemar_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for hits, n in ((48, 49), (49, 49), (0, 10), (7, 13)):
        expected = stats.binomtest(hits, n).proportion_ci(method="wilson")
        assert metrics.wilson_interval(hits, n) == pytest.approx((expected.low, expected.high), abs=1e-12)
    for lost, gained in ((3, 0), (1, 0), (5, 2), (12, 2), (0, 0)):
        m = lost + gained
        expected = stats.binomtest(min(lost, gained), m, 0.5).pvalue if m else 1.0
        assert metrics.exact_mcnemar(lost, gained) == pytest.approx(expected, abs=1e-12)
    # "98.0% vs 95.9% on 49 photos is one photo": one flip is never significant
    assert metrics.exact_mcnemar(1, 0) == 1.0


def test_paired_difference_interval_newcombe_example():
    # Newcombe (1998), Statistics in Medicine 17:2635, method 10 on a=36, b=12, c=2, d=0: [0.0569, 0.3404]
    low, high = metrics.paired_difference_interval(36, 12, 2, 0)
    assert (round(low, 4), round(high, 4)) == (0.0569, 0.3404)


def test_paired_accuracy_and_per_class():
    reference = np.array([1, 1, 1, 1, 0, 1, 1, 1, 1, 1], bool)
    candidate = np.array([1, 1, 0, 1, 0, 1, 1, 1, 1, 1], bool)
    paired = metrics.paired_accuracy(reference, candidate)
    assert (paired["flips"], paired["lost"], paired["gained"]) == (1, 1, 0)
    assert paired["change"] == pytest.approx(-0.1) and paired["mcnemar_p"] == 1.0 and not paired["significant"]
    low, high = paired["change_interval"]
    assert -1 < low < -0.1 < 0 < high < 1  # one photo: the change cannot be told from no change
    classes = metrics.per_class([[4, 1], [0, 5]], ["ants", "bees"])
    assert classes == {"ants": {"precision": 1.0, "recall": 0.8, "support": 5},
                       "bees": {"precision": 5 / 6, "recall": 1.0, "support": 5}}
    change = metrics.per_class_change(classes, metrics.per_class([[5, 0], [0, 5]], ["ants", "bees"]))
    assert change["ants"]["recall_change"] == pytest.approx(-0.2) and change["bees"]["precision_change"] == \
        pytest.approx(5 / 6 - 1)
    assert metrics.per_class([[0, 0], [0, 3]], ["a", "b"])["a"] == {"precision": None, "recall": None, "support": 0}


def test_paired_ratio_cancels_a_shared_drift():
    rng = np.random.default_rng(1)
    load = np.repeat([1.0, 3.0, 1.5, 2.5], 25)  # the machine's load swings 3x between stretches of rounds
    fast = 2.0 * load * rng.lognormal(0, 0.03, 100)
    slow = 5.0 * load * rng.lognormal(0, 0.03, 100)
    ratio = paired_ratio(slow, fast)
    assert ratio["low"] < 2.5 < ratio["high"] and ratio["high"] - ratio["low"] < 0.1 and ratio["separates"]
    assert ratio == paired_ratio(slow, fast)  # seeded: the same times give the same interval
    # unpaired, the swing would dominate: the p50 of each stretch-mixed series moves by the load pattern
    same = paired_ratio(fast, fast * rng.lognormal(0, 0.03, 100))
    assert same["low"] < 1 < same["high"] and not same["separates"]
    with pytest.raises(ValueError):
        paired_ratio([1.0, 2.0], [1.0])


# -- a bench under load ----------------------------------------------------------------------------
BIG = 288  # 9x the pixels of the 96 px CNN: a cost ratio no load swing can reverse


def _cnn_at(size: int, source: Path, out: Path) -> Path:
    """The small CNN rebuilt at another input size with the same weights (every layer is size-free:
    convolutions, global pooling, dense) as a model directory, ready to export."""
    import keras

    from edgetl.metadata import MODEL_FILE, MODEL_METADATA, read_model_metadata, sha256_file, write_json
    from edgetl.preprocess import Preprocessing
    from edgetl.training import build_classifier, load_trained

    model, meta = load_trained(source)
    inputs = keras.Input((size, size, 3))
    x = inputs
    for filters in (8, 16, 32):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
    recipe = Preprocessing.from_dict({**meta["preprocessing"], "input_size": [size, size]})
    bigger = build_classifier(keras.Model(inputs, x, name="backbone"), recipe, len(meta["labels"]), 0.0)
    bigger.set_weights(model.get_weights())
    out.mkdir(parents=True)
    bigger.save(out / MODEL_FILE)
    write_json(out / MODEL_METADATA, {**read_model_metadata(source), "preprocessing": recipe.to_dict(),
                                      "input": {**meta["input"], "shape": [None, size, size, 3]},
                                      "model_sha256": sha256_file(out / MODEL_FILE)})
    return out


def _busy_loops(seconds: float) -> list[subprocess.Popen]:
    """One pure-Python busy loop per core, each ending by itself after ``seconds`` in any case."""
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(os.cpu_count() or 2)]


def test_ranking_and_ratio_hold_under_load(runtime_model_dir, cnn_artifacts, sample_subset, tmp_path):
    from conftest import export_artifacts
    from edgetl.benchmark import BenchConfig, bench

    data = sample_subset(3)
    big_dir = _cnn_at(BIG, runtime_model_dir, tmp_path / "big_model")
    big = export_artifacts(big_dir, tmp_path / "big", data, formats=("onnx",))[("onnx", "fp32", "float32")]
    small = cnn_artifacts.paths["onnx"]
    settings = dict(artifacts=[small, big], data=data, reference=runtime_model_dir, runs=60, warmup=3,
                    batch_sizes=(1,), threads=1, measure_overhead=False, benchmark_app_seconds=0,
                    openvino_native_precision=False)

    def slower_over_faster(out: Path) -> dict:
        report = bench(BenchConfig(out=out, **settings)).json
        names = {Path(e["path"]).resolve(): e["name"] for e in report["artifacts"]}
        by_name = {e["name"]: e for e in report["artifacts"]}
        fast, slow = by_name[names[small.resolve()]], by_name[names[big.resolve()]]
        assert len(fast["latency_ms"]["1"]["times_ms"]) == len(report["reference"]["latency_ms"]["1"]["times_ms"]) == 60
        assert report["recommendation"]["artifact"] == fast["name"], report["recommendation"]
        return paired_ratio(slow["latency_ms"]["1"]["round_ms"], fast["latency_ms"]["1"]["round_ms"])

    quiet = slower_over_faster(tmp_path / "quiet")
    loops = _busy_loops(60)
    try:
        loaded = slower_over_faster(tmp_path / "loaded")
        assert all(loop.poll() is None for loop in loops)  # the load was on for the whole loaded bench
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    for ratio in (quiet, loaded):
        assert ratio["separates"] and ratio["low"] > 1.3, ratio  # ranked right, and told apart
    # The loaded ratio stays near the quiet one: its interval reaches within 25% of the quiet ratio.
    assert loaded["low"] <= quiet["ratio"] * 1.25 and loaded["high"] >= quiet["ratio"] / 1.25, (quiet, loaded)


def test_search_front_and_winner_use_anchor_latency_and_the_top1_interval():
    from edgetl.search.pareto import front, trial_objectives, winner

    def trial(name, top1, n, p50, vs_anchor):
        low, high = metrics.wilson_interval(round(top1 * n), n)
        return {"trial": name, "top1": top1, "top1_low": low, "top1_high": high, "latency_p50_ms": p50,
                "latency_vs_anchor": vs_anchor, "size_bytes": 1000}

    # b was benched while the machine was busy: its absolute p50 reads slow, its ratio to the anchor does not.
    rows = [trial("a", 0.96, 49, 2.0, 1.0), trial("b", 0.94, 49, 6.0, 0.5), trial("c", 0.70, 49, 1.0, 0.4)]
    assert [key for key, _ in trial_objectives(rows)] == ["top1", "latency_vs_anchor", "size_bytes"]
    assert [r["trial"] for r in front(rows, trial_objectives(rows))] == ["a", "b", "c"]
    best, rule = winner(rows, baseline_top1=0.96, max_drop=1.0)
    # b is one photo below the floor on 49 images: its interval reaches 95%; c is far below it
    assert best["trial"] == "b" and "relative to the target's anchor" in rule and "95% interval" in rule
    assert winner(rows[:1] + rows[2:], baseline_top1=0.96, max_drop=1.0)[0]["trial"] == "a"
    # a trial without a ratio (an old bench): every trial falls back to the absolute p50
    rows[2]["latency_vs_anchor"] = None
    assert [key for key, _ in trial_objectives(rows)][1] == "latency_p50_ms"


# Ties and zero vectors: the agreement rule export parity and the bench share.
def test_parity_ties_and_zero_vectors():
    from edgetl.exporting.parity import compare, describe
    from edgetl.metrics import agreement_rows
    from edgetl.metrics import compare as same_space_compare

    rng = np.random.default_rng(0)
    # A degenerate model: every logit ~1e-10, an INT8 artifact off by ~3e-10. No class is preferred.
    reference = (rng.normal(size=(12, 2)) * 1e-10).astype(np.float32)
    artifact = (reference + rng.normal(size=reference.shape) * 2e-10).astype(np.float32)
    assert (reference.argmax(1) != artifact.argmax(1)).sum() >= 3  # the plain argmax rule disagrees
    parity = compare(reference, artifact, "int8", 0.98)
    assert parity["top1_agreement"] == 1.0 and parity["cosine"] == 1.0 and parity["passed"]
    assert parity["max_abs_diff"] < 1e-9
    assert describe(parity).startswith("agreement 1.000 (12/12)")
    bench = same_space_compare(reference, artifact)
    assert bench["top1_agreement"] == 1.0 and bench["cosine_mean"] == bench["cosine_min"] == 1.0

    # Real logits: a swapped clear decision still disagrees; a near-tie (1e-5 of a range of 8) agrees.
    reference = np.array([[4.0, -4.0], [1.0, 1.0 + 8e-5], [0.5, -0.5]], np.float32)
    artifact = np.array([[-4.0, 4.0], [1.0, 1.0], [0.5, -0.5]], np.float32)
    parity = compare(reference, artifact, "int8", 0.98)
    assert parity["top1_agreement"] == pytest.approx(2 / 3) and not parity["passed"]
    assert same_space_compare(reference, artifact)["top1_agreement"] == pytest.approx(2 / 3)
    # A NaN row never agrees (and nulls the cosine mean); a zero vector against a real one has cosine 0.
    outputs = np.array([[np.nan, 0.0], [0.0, 0.0]], np.float32)
    reference = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    agree, cosine = agreement_rows(reference, outputs)
    assert agree.tolist() == [False, True] and np.isnan(cosine[0]) and cosine[1] == 0.0
    result = same_space_compare(reference, outputs)
    assert result["top1_agreement"] == 0.5 and result["cosine_mean"] is None
