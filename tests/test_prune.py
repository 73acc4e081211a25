"""`edgetl prune`: magnitude sparsity per layer, zeros surviving ONNX/TFLite export, structured channel
removal (fewer parameters, exact outputs when only dead channels go), the sweep report, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgetl.cli import main


@pytest.fixture(scope="module")
def magnitude_run(tiny_model_dir, tmp_path_factory):
    from edgetl.pruning import PruneConfig, prune

    out = tmp_path_factory.mktemp("prune") / "magnitude"
    result = prune(PruneConfig(model_dir=tiny_model_dir, out=out, method="magnitude", sparsity=0.5,
                               schedule="polynomial", epochs=1, verbose=False))
    return result


def test_polynomial_schedule_ramps_to_target():
    from edgetl.pruning.magnitude import Schedule, magnitude_mask

    schedule = Schedule.for_training("polynomial", 0.6, total_steps=40)
    values = [schedule.sparsity(step) for step in range(41)]
    assert values[0] == 0.0 and values[-1] == pytest.approx(0.6)
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert Schedule.for_training("constant", 0.6, 40).sparsity(0) == 0.6
    weights = np.arange(-50, 50, dtype=np.float32).reshape(10, 10)
    mask = magnitude_mask(weights, 0.3)
    assert int((mask == 0).sum()) == 30 and np.abs(weights[mask == 0]).max() <= np.abs(weights[mask == 1]).min()


def test_magnitude_reaches_target_per_layer(magnitude_run, tiny_model_dir):
    import keras

    from edgetl.metadata import sha256_file
    from edgetl.pruning.magnitude import kernel_of, iter_layers

    record = magnitude_run.record
    assert record["method"] == "magnitude" and record["target_sparsity"] == 0.5
    assert len(record["per_layer"]) > 20
    for name, layer in record["per_layer"].items():
        assert abs(layer["sparsity"] - 0.5) <= 0.01, name
    # The classifier and the tiny stem conv are left dense, and say why.
    assert record["skipped_layers"]["logits"] == "classifier"
    assert {"Conv1", "stem_conv"} & set(record["skipped_layers"])  # MobileNetV2 / Lite stem
    assert set(record["accuracy"]) == {"original", "before_recovery", "after_recovery"}
    assert record["recovery"]["history"] and record["recovery"]["val_split"] == 0.2

    # What was saved is a plain Keras model with the zeros in it, and the metadata describes it.
    out = magnitude_run.model_dir
    metadata = json.loads((out / "edgetl.json").read_text())
    source = json.loads((tiny_model_dir / "edgetl.json").read_text())
    assert metadata["model_sha256"] == sha256_file(out / "model.keras")
    assert metadata["labels"] == source["labels"] and metadata["preprocessing"] == source["preprocessing"]
    assert metadata["pruning"]["per_layer"] == record["per_layer"]
    model = keras.models.load_model(out / "model.keras", compile=False)
    layers = {layer.name: layer for layer in iter_layers(model)}
    for name, layer in record["per_layer"].items():
        kernel = kernel_of(layers[name]).numpy()
        assert int((kernel == 0).sum()) == layer["zeros"]
    assert not any("prune" in type(layer).__name__.lower() for layer in layers.values())


def test_magnitude_zeros_survive_onnx_and_tflite_export(magnitude_run, tmp_path):
    from edgetl.pruning.artifacts import count_zero_weights, export_float
    from edgetl.runtime.backends import open_backend

    pruned = magnitude_run.record["pruned_weights"]
    paths = export_float(magnitude_run.model_dir, tmp_path / "artifacts", ("onnx", "tflite"))
    for fmt in ("onnx", "tflite"):
        assert count_zero_weights(paths[fmt]) >= pruned, fmt
        backend = open_backend(paths[fmt])
        out = backend.run(np.zeros((1, 96, 96, 3), np.float32))
        assert out.shape == (1, 2) and np.isfinite(out).all()


def _dense_copy_with_dead_channels(model_dir):
    """The tiny model with the first quarter of every expanded channel made dead: expand-conv filters,
    expand BN gamma/beta and depthwise BN gamma/beta zero, so those channels are exactly 0 all the way
    to the project conv and contribute nothing."""
    from edgetl.training import load_trained
    from edgetl.pruning import structured as st

    model, metadata = load_trained(model_dir)
    backbone = model.get_layer("backbone")
    groups = st.family_groups(model, "inverted_residual")
    dead = {}
    for group in groups:
        k = group.channels // 4
        dead[group.source] = list(range(k))
        conv = backbone.get_layer(group.source)
        kernel = conv.kernel.numpy()
        kernel[..., :k] = 0
        conv.kernel.assign(kernel)
        bns = [backbone.get_layer(n) for n in group.chain if type(backbone.get_layer(n)).__name__ == "BatchNormalization"]
        assert len(bns) == 2
        for bn in bns:
            for var in (bn.gamma, bn.beta):
                value = var.numpy()
                value[:k] = 0
                var.assign(value)
    return model, groups, dead


def test_structured_removing_dead_channels_keeps_outputs_exactly(tiny_model_dir, sample_dir):
    import keras

    from edgetl.data import load_inputs, scan_folder
    from edgetl.preprocess import Preprocessing
    from edgetl.pruning import structured as st

    model, groups, dead = _dense_copy_with_dead_channels(tiny_model_dir)
    # Expanded layers only (MobileNetV2: block_1..16_expand; Lite0: block2a..7a_expand_conv); the stem,
    # the projections and the top conv are untouched.
    assert len(groups) >= 15 and all("expand" in g.source and g.consumer.endswith(("project", "project_conv"))
                                     for g in groups)
    st.select_channels(model, groups, 0.25, "bn", multiple=1)  # exactly the dead quarter (144 -> 108)
    assert {g.source: g.removed for g in groups} == dead
    pruned = st.rebuild(model, groups)

    assert [l.name for l in pruned.layers] == [l.name for l in model.layers]
    assert pruned.count_params() < model.count_params()
    last = groups[-1]
    assert pruned.get_layer("backbone").get_layer(last.source).filters == last.channels - last.channels // 4
    metadata = json.loads((tiny_model_dir / "edgetl.json").read_text())
    images = scan_folder(sample_dir)
    x = load_inputs(images.paths[::6], Preprocessing.from_dict(metadata["preprocessing"]))

    def outputs(m):
        head = keras.Model(m.inputs, [m.output, m.get_layer("logits").output, m.get_layer("pool").input])
        return [np.asarray(v) for v in head(x, training=False)]

    (probs_a, logits_a, feats_a), (probs_b, logits_b, feats_b) = outputs(model), outputs(pruned)
    assert feats_a.std() > 1e-3  # a real comparison, not of constants
    assert np.abs(probs_a - probs_b).max() < 1e-5
    # Fewer terms in each projection sum change float rounding only (features reach 6, ReLU6).
    for a, b in ((logits_a, logits_b), (feats_a, feats_b)):
        assert np.abs(a - b).max() < 1e-5 * max(1.0, np.abs(a).max())


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "vgg19"])
def test_structured_other_topologies_remove_dead_channels_exactly(backbone):
    """EfficientNet-Lite (inverted residual) and VGG (plain conv stack), random weights at 32 px:
    channels whose filters (and BN scale/shift) are zero go without changing the output."""
    from edgetl import zoo
    from edgetl.training import build_classifier
    from edgetl.pruning import structured as st

    spec = zoo.get(backbone)
    base = spec.build("none", 32)
    base.name = "backbone"
    model = build_classifier(base, spec.recipe(32), 2, 0.2)
    x = np.random.default_rng(1).standard_normal((8, 32, 32, 3)).astype(np.float32)
    # Random init with default BN statistics shrinks activations to ~1e-13 by the last block: set each
    # BN's moving statistics to one batch's (momentum 0, one training-mode call) so signals stay O(1).
    for layer in base.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.momentum = 0.0
    model(x, training=True)
    groups = st.family_groups(model, spec.family)
    assert len(groups) == 15  # Lite0: blocks 2a..7a have an expand conv; VGG19: 16 convs, the last feeds pooling
    for group in groups:
        k = group.channels // 4
        conv = base.get_layer(group.source)
        conv.kernel.assign(np.concatenate([np.zeros_like(conv.kernel.numpy()[..., :k]), conv.kernel.numpy()[..., k:]], -1))
        if conv.use_bias:
            conv.bias.assign(np.concatenate([np.zeros(k, np.float32), conv.bias.numpy()[k:]]))
        for name in group.chain:
            layer = base.get_layer(name)
            if type(layer).__name__ == "BatchNormalization":
                for var in (layer.gamma, layer.beta):
                    var.assign(np.concatenate([np.zeros(k, np.float32), var.numpy()[k:]]))
    st.select_channels(model, groups, 0.25, "l1", multiple=1)  # exactly the zeroed quarter
    assert all(g.removed == list(range(g.channels // 4)) for g in groups)
    pruned = st.rebuild(model, groups)
    assert pruned.count_params() < 0.8 * model.count_params()
    logits = [keras_logits(m, x) for m in (model, pruned)]
    scale = np.abs(logits[0]).max()  # O(1) for Lite; ~1e-5 for random-init VGG (no BN to rescale)
    assert scale > 1e-6 and np.abs(logits[0] - logits[0][::-1]).max() > 1e-3 * scale  # inputs matter
    assert np.abs(logits[0] - logits[1]).max() < 1e-5 * max(scale, 1e-3)


def test_structured_kept_channels_are_multiples_of_eight(tiny_model_dir):
    """At 60% lite0's expanded widths (96, 144, 240, 480, 672, 1152) would keep 39, 58, 96, 192, 269, 461;
    by default they are rounded up to a multiple of 8 (INT8 kernels' channel blocks) in the rebuilt model."""
    from edgetl.training import load_trained
    from edgetl.pruning import structured as st

    assert [st.kept_channels(c, 0.6, 1) for c in (96, 144, 672)] == [39, 58, 269]
    assert [st.kept_channels(c, 0.6) for c in (96, 144, 672)] == [40, 64, 272]
    assert st.kept_channels(12, 0.99) == 8 and st.kept_channels(6, 0.5) == 6  # never above C
    model, _ = load_trained(tiny_model_dir)
    groups = st.family_groups(model, "inverted_residual")
    st.select_channels(model, groups, 0.6, "l1")
    pruned = st.rebuild(model, groups).get_layer("backbone")
    widths = {g.channels: pruned.get_layer(g.source).filters for g in groups}
    assert widths == {96: 40, 144: 64, 240: 96, 480: 192, 672: 272, 1152: 464}
    assert all(pruned.get_layer(g.consumer).kernel.shape[2] == widths[g.channels] for g in groups)


def keras_logits(model, x):
    import keras

    return np.asarray(keras.Model(model.inputs, model.get_layer("logits").output)(x, training=False))


def test_structured_prune_recovers_and_exports(tiny_model_dir, tmp_path):
    from edgetl.pruning import PruneConfig, prune
    from edgetl.pruning.artifacts import export_float, logits_model
    from edgetl.runtime.backends import open_backend

    result = prune(PruneConfig(model_dir=tiny_model_dir, out=tmp_path / "structured", method="structured",
                               sparsity=0.5, importance="l1", epochs=1, verbose=False))
    record = result.record
    assert record["params_after"] < 0.7 * record["params_before"]
    assert record["family"] == "inverted_residual" and record["channel_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert len(record["per_layer"]) >= 15
    for source, layer in record["per_layer"].items():
        assert "expand" in source and layer["removed"] == layer["channels"] // 2
        assert layer["kept"] == layer["channels"] - layer["removed"]
        assert [type_ for type_ in layer["path"] if "dw" in type_ or "depthwise" in type_]  # through the depthwise
    assert record["reconstructed_layers"] == [layer["consumer"] for layer in record["per_layer"].values()]
    # Accuracy kept: the pruned, recovered model against the unpruned one on the same val split (12 images).
    accuracy = record["accuracy"]
    assert accuracy["original"] >= 0.7 and accuracy["after_recovery"] >= accuracy["original"] - 0.17, accuracy

    paths = export_float(result.model_dir, tmp_path / "artifacts", ("onnx",))
    x = np.random.default_rng(0).standard_normal((1, 96, 96, 3)).astype(np.float32)
    expected = np.asarray(logits_model(result.model_dir)(x, training=False))
    got = open_backend(paths["onnx"]).run(x)
    assert np.abs(got - expected).max() < 1e-3 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize("loss", ["distill", "features"])
def test_structured_recovery_learns_from_the_unpruned_model(tiny_model_dir, tmp_path, loss):
    """Recovery by distillation (the unpruned model's probabilities) or by matching its pooled features,
    with early stopping on the val loss; it trains the frozen backbone of a `features` model too."""
    from edgetl.pruning import PruneConfig, prune
    from edgetl.training import load_trained

    result = prune(PruneConfig(model_dir=tiny_model_dir, out=tmp_path / loss, method="structured", sparsity=0.5,
                               epochs=2, recovery_loss=loss, patience=1, reconstruct=False, verbose=False))
    recovery = result.record["recovery"]
    assert recovery["loss"] == loss and recovery["teacher"] == "the unpruned model" and recovery["patience"] == 1
    assert ("temperature" in recovery) == (loss == "distill")
    losses = [row["val_loss"] for row in recovery["history"]]
    assert 1 <= len(losses) <= 2 and all(np.isfinite(losses))
    val_loss = result.record["val_loss"]
    assert val_loss["after_recovery"] < val_loss["before_recovery"], val_loss  # one-shot pruned -> recovered
    original, _ = load_trained(tiny_model_dir)
    stem = [m.get_layer("backbone").get_layer("stem_conv").kernel.numpy() for m in (original, result.model)]
    assert np.abs(stem[0] - stem[1]).max() > 1e-6  # not pruned, yet trained: the backbone learns


def test_sweep_writes_one_report(tiny_model_dir, tmp_path):
    out = tmp_path / "sweep"
    assert main(["prune", str(tiny_model_dir), "--out", str(out), "--method", "magnitude",
                 "--schedule", "constant", "--sweep", "0.6", "--epochs", "0"]) == 0
    summary = json.loads((out / "sweep.json").read_text())
    rows = {row["label"]: row for row in summary["rows"]}
    assert list(rows) == ["dense", "sparsity_60"]
    for row in rows.values():
        assert row["latency_p50_ms"] > 0 and row["onnx_bytes"] > 0 and row["tflite_gzip_bytes"] > 0
    # Unstructured zeros do not shrink the dense file format, but they do compress.
    assert rows["sparsity_60"]["onnx_gzip_bytes"] < 0.8 * rows["dense"]["onnx_gzip_bytes"]
    assert rows["sparsity_60"]["nonzero_params"] < 0.6 * rows["dense"]["nonzero_params"]
    assert (out / "sweep.md").read_text().count("sparsity_60") >= 1 and (out / "sweep.png").stat().st_size > 0
    assert (out / "sparsity_60" / "model.keras").exists()


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "0"], "strictly between 0 and 1"),
    (["--sparsity", "1.5"], "strictly between 0 and 1"),
    (["--sweep", "0.5,1.0"], "strictly between 0 and 1"),
    (["--method", "lottery"], "unknown pruning method"),
    (["--schedule", "cubic"], "unknown schedule"),
    (["--recovery-loss", "hints"], "unknown recovery loss"),
    (["--recovery-loss", "features"], "is for structured pruning"),
    (["--method", "structured", "--channel-multiple", "0"], "channel multiple must be >= 1"),
])
def test_bad_arguments_exit_2(tiny_model_dir, tmp_path, capsys, args, message):
    assert main(["prune", str(tiny_model_dir), "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unsupported_topology_and_nothing_prunable_exit_2(tiny_model_copy, tmp_path, capsys):
    meta_path = tiny_model_copy / "edgetl.json"
    metadata = json.loads(meta_path.read_text())
    metadata["backbone"], metadata["backbones"] = "resnet50", ["resnet50"]
    meta_path.write_text(json.dumps(metadata))
    assert main(["prune", str(tiny_model_copy), "--out", str(tmp_path / "a"), "--method", "structured"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not support backbone resnet50" in err and len(err.splitlines()) == 1

    assert main(["prune", str(tiny_model_copy), "--out", str(tmp_path / "b"), "--method", "magnitude",
                 "--min-params", "100000000"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no prunable layers" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    shutil.rmtree(tiny_model_copy)
