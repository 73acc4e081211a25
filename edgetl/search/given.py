"""`edgetl search --model MODEL`: a bench-only search of a model the user already has (an ONNX file, a
SavedModel or .keras file with its preprocessing stated, or an edgetl model directory) over formats x
quantization x targets. No fine-tune and no prune stage: every trial exports the given file the way
`edgetl export MODEL --preprocess ... --labels ...` does, then benches it, and the front and winner are
written as for any search.

A trial's point names the model (its file name without suffix) as the backbone and ``given`` as the
strategy, so its rows read ``mine/given/sp0/onnx/int8@cpu``. The export stage is keyed on the file's
hash and the stated flags; an edgetl model directory states nothing and keys its exports exactly as
`edgetl run` and a normal search do, so their stages are shared. The baseline the winner's ``--max-drop``
counts from is the given model's own FP32 top-1 on the validation split, as the bench's reference
measures it (ONNX Runtime for an ``.onnx`` file, Keras for an edgetl model; a foreign Keras model has no
bench reference, hence no baseline: its export stage's parity is what compares it).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..metadata import MODEL_METADATA, fingerprint_files, read_model_card, sha256_file

GIVEN = "given"  # the strategy of a --model point: the model as given, neither fine-tuned nor pruned
SKIPPED = "--model: the given model, neither fine-tuned nor pruned"


def name_of(model: Path) -> str:
    model = Path(model)
    return model.stem if model.is_file() else model.resolve().name


def is_edgetl_model(model: Path) -> bool:
    from ..exporting.sources import has_edgetl_metadata

    return has_edgetl_metadata(model)


def model_hash(model: Path) -> str:
    """What export and bench stages are keyed on: an edgetl model's own hash (shared with `edgetl run`),
    else the file's sha256 (a SavedModel directory: its files')."""
    model = Path(model)
    if model.is_dir() and (model / MODEL_METADATA).is_file():
        return read_model_card(model).model_sha256
    if model.is_file():
        return sha256_file(model)
    return fingerprint_files(sorted(p for p in model.rglob("*") if p.is_file()), root=model)["fingerprint"]


def export_config(config, out: Path):
    """The ``ExportConfig`` the stated flags make for the given model (formats and modes set per stage)."""
    from ..exporting import ExportConfig

    return ExportConfig(model=config.model, out=out, preprocessing=config.preprocessing,
                        output_kind=config.output_kind, labels=config.labels, input_size=config.input_size,
                        verbose=False)


def validate(config) -> None:
    """Before Ray: the model is there and readable, its stated preprocessing, labels and output kind hold
    (the export command's own checks), and no training axis is set."""
    from ..exporting import sources

    if not config.model.exists():
        raise UsageError(f"--model {config.model} does not exist")
    if config.model.suffix == ".keras" and is_edgetl_model(config.model):
        config.model = config.model.parent  # an edgetl model's model.keras stands for its directory
    from .. import zoo

    trained = [flag for flag, value, default in (
        ("--backbones", config.backbones, (zoo.DEFAULT_BACKBONE,)), ("--strategies", config.strategies, ("features",)),
        ("--sparsity", config.sparsity, (0.0,)), ("--input-sizes", config.input_sizes, ()))
        if tuple(value) != default]
    if trained:
        raise UsageError(f"--model searches formats x quantization x targets of the given model; drop {trained[0]}")
    export = export_config(config, config.out / "stages" / "export")
    sources.validate(export)
    if sources.pick(config.model) == "onnx":  # its width is in the file: wrong labels fail before Ray
        from ..exporting.sources import foreign, onnx_source

        _, out_dims = onnx_source.check_classifier(onnx_source.load_model(config.model), config.model)
        foreign.labels(export, out_dims[1])


def points(config, axes: dict[str, list], extra: list) -> list:
    """quantize x formats of the given model (a --space file may set those two axes, nothing else)."""
    from .space import Point

    other = sorted(set(axes) - {"quantize", "formats"}) + (["points"] if extra else [])
    if other:
        raise UsageError(f"--space {config.space}: with --model only quantize and formats can be set, not {other[0]}")
    return [Point(name_of(config.model), GIVEN, 0.0, q, f) for q in axes.get("quantize", config.quantize)
            for f in axes.get("formats", config.formats)]


def foreign_spec(config) -> dict[str, Any] | None:
    """The stated flags as the export stage receives (and is keyed on) them; None for an edgetl model."""
    if is_edgetl_model(config.model):
        return None
    stated = dataclasses.asdict(config.preprocessing) if config.preprocessing else None
    recipe_sha = None
    if stated and stated["preprocess"] and Path(stated["preprocess"]).is_file():
        stated["preprocess"] = str(Path(stated["preprocess"]).resolve())  # Ray workers have their own cwd
        recipe_sha = sha256_file(stated["preprocess"])
    labels = list(config.labels)
    if len(labels) == 1 and Path(labels[0]).is_file():
        labels = [str(Path(labels[0]).resolve())]
    return {"preprocessing": stated, "recipe_sha256": recipe_sha, "labels": labels,
            "output_kind": config.output_kind, "input_size": config.input_size}


def export_options(foreign: dict[str, Any]) -> dict[str, Any]:
    """ExportConfig keyword arguments of a stage's foreign spec."""
    from ..preprocess_presets import StatedPreprocessing

    stated = foreign.get("preprocessing")
    return dict(preprocessing=StatedPreprocessing(**stated) if stated else None, labels=tuple(foreign["labels"]),
                output_kind=foreign.get("output_kind"), input_size=foreign.get("input_size"))


def bench_reference(model: Path) -> Path | None:
    """What a bench compares with: the ONNX file in ONNX Runtime, an edgetl model in Keras; a foreign
    Keras or SavedModel model has none (the bench's reference needs edgetl.json)."""
    model = Path(model)
    if model.suffix.lower() == ".onnx" or (model.is_dir() and (model / MODEL_METADATA).is_file()):
        return model
    return None


def run(config, trials, export_and_bench) -> None:
    """The rung a --model search has: export and bench every point of the given model."""
    model = config.model.resolve()
    live = [t for t in trials if t.status == "pending"]
    for t in live:
        t.stages["finetune"] = {"skipped": SKIPPED, "model": str(model)}
        t.stages["prune"] = {"skipped": SKIPPED}
    export_and_bench(live, {t.id: model for t in live}, foreign_spec(config))
    # The baseline of --max-drop: the given model's FP32 top-1 on the val split, as the bench measured it.
    measured = [t.stages["bench"].get("reference_top1") for t in trials if "bench" in t.stages]
    baseline = next((v for v in measured if v is not None), None)
    for t in trials:
        if "finetune" in t.stages:
            t.stages["finetune"]["val_accuracy"] = baseline
