"""Each strategy end to end on the embedded sample with a small backbone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetl.cli import main
from edgetl.data import load_inputs, load_splits
from edgetl.training import FinetuneConfig, finetune, load_trained
from edgetl.preprocess import Preprocessing

SIZE = 96


def _config(sample_dir, out, **kw):
    base = dict(data=sample_dir, out=out, backbone="mobilenet_v2", weights="none", epochs=1,
                batch_size=16, input_size=SIZE, verbose=False, strategy="features")
    base.update(kw)
    return FinetuneConfig(**base)


def _reload_matches(result, sample_dir):
    model, metadata = load_trained(result.model_dir)
    recipe = Preprocessing.from_dict(metadata["preprocessing"])
    _, val = load_splits(sample_dir, metadata["dataset"]["val_split"], metadata["dataset"]["seed"])
    x = load_inputs(val.paths, recipe)
    np.testing.assert_allclose(model.predict(x, verbose=0), result.model.predict(x, verbose=0), atol=1e-6)
    return metadata


def _backbone_weights(model):
    return [w.copy() for w in model.get_layer("backbone").get_weights()]


def test_features_strategy_keeps_backbone_frozen(sample_dir, tmp_path):
    import keras

    # Build once to know the initial backbone weights: same seed -> same init.
    keras.utils.set_random_seed(0)
    result = finetune(_config(sample_dir, tmp_path / "m"))
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert files == {"model.keras", "edgetl.json", "training.png", ".edgetl-output.json"}
    metadata = _reload_matches(result, sample_dir)
    assert metadata["labels"] == ["ants", "bees"]
    assert metadata["preprocessing"]["input_size"] == [SIZE, SIZE]
    assert metadata["strategy"] == "features" and metadata["weights"] == {"kind": "none"}
    assert len(metadata["history"]) == 1 and "val_accuracy" in metadata["history"][0]
    assert len(metadata["dataset"]["val"]["files"]) == 12
    root = Path(metadata["dataset"]["root"])
    assert all((root / f).is_file() for f in metadata["dataset"]["val"]["files"])
    # Frozen backbone: a fresh build with the same seed has the very same weights.
    keras.utils.set_random_seed(0)
    from edgetl import zoo

    fresh = zoo.get("mobilenet_v2").build("none", SIZE)
    for a, b in zip(fresh.get_weights(), _backbone_weights(result.model)):
        np.testing.assert_array_equal(a, b)


def test_freeze_strategy_changes_exactly_the_chosen_layers(sample_dir, tmp_path):
    features = finetune(_config(sample_dir, tmp_path / "head"))
    before = {l.name: [w.copy() for w in l.get_weights()]
              for l in features.model.get_layer("backbone").layers if l.weights}
    result = finetune(_config(sample_dir, tmp_path / "m", strategy="freeze", unfreeze_top=5,
                              fine_tune_epochs=1, fine_tune_lr=1e-2))
    chosen = set(result.metadata["unfrozen_layers"])
    assert len(chosen) == 5
    # Same seed: the head phase is identical to the features run, so compare against it.
    for layer in result.model.get_layer("backbone").layers:
        if not layer.weights:
            continue
        changed = any(not np.array_equal(a, b) for a, b in zip(before[layer.name], layer.get_weights()))
        if layer.name in chosen:
            assert changed, f"{layer.name} was unfrozen but did not change"
        if layer.name not in chosen:
            assert not changed, f"{layer.name} was frozen but changed"
    _reload_matches(result, sample_dir)


def test_freeze_second_phase_defaults_to_lr_over_30_and_cli_repeats_the_defaults(sample_subset, tmp_path):
    """freeze (the default strategy): head, then the top 40 layers at lr/30 (measured,
    tools/RESULTS-accuracy.md E and E2); the CLI's finetune/run options repeat the library's defaults,
    so they must not drift apart."""
    import dataclasses

    import typer

    from edgetl.cli import app
    from edgetl.pipeline import RunConfig

    sample_dir = sample_subset(8)  # the rate and the phases do not depend on how many photos train
    result = finetune(_config(sample_dir, tmp_path / "m", strategy="freeze", lr=3e-3))
    assert [h["phase"] for h in result.history] == ["head", "freeze"]
    assert len(result.metadata["unfrozen_layers"]) == 40
    assert [h["lr"] for h in result.history] == pytest.approx([3e-3, 3e-3 / 30])
    defaults = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)
                if f.default is not dataclasses.MISSING and f.name != "backbones"}
    commands = typer.main.get_command(app).commands
    cli = {p.name: p.default for p in commands["finetune"].params if p.name in defaults}
    assert cli == {k: (str(v) if k == "strategy" else v) for k, v in defaults.items() if k in cli}
    assert len(cli) >= 15, cli
    # --unfreeze-top unset: 40 layers for freeze, 20 for a distilled freeze student (RESULTS-accuracy C3)
    assert _config(sample_dir, tmp_path / "x").second_phase("freeze")[0] == 40
    assert _config(sample_dir, tmp_path / "x", strategy="distill").second_phase("freeze")[0] == 20
    assert _config(sample_dir, tmp_path / "x", strategy="distill", unfreeze_top=7).second_phase("freeze")[0] == 7
    run_strategy = next(p.default for p in commands["run"].params if p.name == "strategy")
    assert run_strategy == RunConfig.strategy == FinetuneConfig.strategy == "freeze"


def test_full_strategy_and_stack(sample_subset, tmp_path):
    # What is checked (phases, unfrozen layers, BatchNorm statistics, the reloaded model, the stack's
    # recipe) does not depend on how many photos train: 8 + 8, not the 60 of the session sample.
    sample_dir = sample_subset(8)
    result = finetune(_config(sample_dir, tmp_path / "full", strategy="full", fine_tune_epochs=1))
    assert [h["phase"] for h in result.history] == ["head", "full"]
    assert len(result.metadata["unfrozen_layers"]) > 50
    # BatchNormalization stayed in inference mode: its statistics are still the initial ones.
    import keras

    norms = [l for l in result.model.get_layer("backbone").layers
             if isinstance(l, keras.layers.BatchNormalization)]
    assert norms and all(np.all(l.moving_mean.numpy() == 0) and np.all(l.moving_variance.numpy() == 1)
                         for l in norms)
    _reload_matches(result, sample_dir)

    # input_size=None: a stack keeps each backbone's own size (--input-size is refused for it).
    stack = finetune(_config(sample_dir, tmp_path / "stack", strategy="stack", input_size=None,
                             backbones=("mobilenet_v3_small", "mobilenet_v2")))
    metadata = _reload_matches(stack, sample_dir)
    assert metadata["output"]["logits_layer"] is None
    # Raw pixels in: each branch normalises itself.
    assert metadata["preprocessing"]["mean"] == [0.0, 0.0, 0.0]
    assert metadata["backbones"] == ["mobilenet_v3_small", "mobilenet_v2"]


def test_cli_finetune_and_help(sample_dir, tmp_path, capsys):
    commands = _commands()
    assert {"finetune", "export", "bench", "prune", "predict", "run"} <= commands
    for command in ([], ["finetune"], ["export"], ["bench"], ["prune"], ["predict"], ["run"]):
        code = main([*command, "--help"])
        text = capsys.readouterr().out
        assert code == 0, command
        # the top-level help lists every command; each command's help names its usage and options
        if command:
            assert f"Usage: edgetl {command[0]}" in " ".join(text.split()) and "--help" in text, (command, text)
        else:
            assert all(name in text for name in commands), text
    assert "--strategy" in _help("finetune", capsys) and "--epochs" in _help("finetune", capsys)
    for args, message in ((["--strategy", "bogus"], "unknown strategy"), (["--backbone", "nope"], "unknown backbone"),
                          (["--epochs", "many"], "--epochs")):
        assert main(["finetune", str(sample_dir), "--out", str(tmp_path / "x"), *args]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("edgetl: error:") and message in err[0], (args, err)
    assert not (tmp_path / "x").exists()


def _help(command: str, capsys) -> str:
    assert main([command, "--help"]) == 0
    return capsys.readouterr().out


def _commands():
    import typer

    from edgetl.cli import app

    return set(typer.main.get_command(app).commands)


def test_interrupted_finetune_leaves_nothing(sample_dir, tmp_path, monkeypatch):
    import edgetl.training as ft

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ft.io, "plot_history", boom)
    with pytest.raises(KeyboardInterrupt):
        finetune(_config(sample_dir, tmp_path / "m"))
    assert list(tmp_path.iterdir()) == []


def test_training_augmentation_repeats_with_the_seed(tmp_path):
    """The same --seed trains on the same crops and flips in every run (stateful random ops in a parallel
    map drew in thread order: seed-0 freeze gave 47/49 or 48/49 from run to run); epochs and seeds differ."""
    from PIL import Image

    from edgetl.data import ImageSet, load_pixels, make_dataset

    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(paths[-1])
    images = ImageSet(["a", "b"], paths, [i % 2 for i in range(12)], tmp_path)
    recipe = Preprocessing().with_input_size(24)
    pixels = load_pixels(paths, recipe, training=True)

    def two_epochs(seed):
        ds = make_dataset(images, recipe, 4, True, seed, pixels=pixels)
        return [np.concatenate([x.numpy() for x, _ in ds]) for _ in range(2)]

    first, again, other = two_epochs(0), two_epochs(0), two_epochs(1)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[0], other[0])
