"""The Keras graph that every converter receives: the model's logits (or probabilities for stack models),
optionally behind a uint8 input that casts and normalises in-graph.

Why logits: a softmax at the end of an INT8 graph is quantized with TFLite's fixed 1/256 output scale
(probabilities below 0.004 become 0 and near-ties collapse), and the runtime applies softmax in float
numpy anyway. Stack models average per-branch probabilities, so there the probabilities are the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..metadata import MODEL_FILE, MODEL_METADATA, read_model_metadata, sha256_file
from ..preprocess import Preprocessing

INPUT_NAME = "image"


@dataclass
class SourceModel:
    """A loaded model and everything export needs to describe it."""

    model: Any  # the full keras model as saved
    path: Path  # the .keras file
    metadata: dict[str, Any]  # edgetl.json, or a minimal stand-in for foreign models
    recipe: Preprocessing
    labels: list[str]
    logits_layer: str | None
    # Where it came from (``exporting.sources``): keras | savedmodel | onnx; and for a foreign model
    # (no edgetl.json) whether a softmax ends its graph and the output kind found on the check images.
    source_kind: str = "keras"
    graph_softmax: bool = False
    detected_kind: str | None = None
    kind_reason: str | None = None
    layout: str = "NHWC"  # the given model's input layout (an ONNX file from PyTorch: NCHW)

    @property
    def foreign(self) -> bool:
        return bool(self.metadata.get("foreign"))

    @property
    def output_kind(self) -> str:
        if self.logits_layer:
            return "logits"
        return self.detected_kind or "probabilities"

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.recipe.input_size)

    def describe(self) -> dict[str, Any]:
        hashed = self.path / "saved_model.pb" if self.path.is_dir() else self.path
        return {"sha256": sha256_file(hashed), "path": str(self.path.resolve()), "kind": self.source_kind,
                "backbone": self.metadata.get("backbone"),
                "model_sha256_recorded": self.metadata.get("model_sha256")}


def resolve_model_path(model: str | Path) -> tuple[Path, Path]:
    """(model.keras file, directory holding it) from a model directory or a .keras file."""
    model = Path(model)
    if model.is_dir():
        return model / MODEL_FILE, model
    if model.suffix == ".keras":
        return model, model.parent
    raise UsageError(f"{model}: expected a model directory (model.keras + edgetl.json) or a .keras file")


def validate_source(model: str | Path, input_size: int | None) -> None:
    """Cheap validation before TensorFlow is touched: files exist and metadata or --input-size given."""
    path, directory = resolve_model_path(model)
    if not path.exists():
        raise UsageError(f"{directory}: no {path.name} to export")
    if not (directory / MODEL_METADATA).exists() and not input_size:
        raise UsageError(f"{directory}: no {MODEL_METADATA}; pass --input-size (and --labels) "
                         f"to export a model not made by edgetl")
    if (directory / MODEL_METADATA).exists():
        read_model_metadata(directory)  # invalid JSON or missing fields: one line, before TensorFlow
    from ..training import check_keras_file

    check_keras_file(path)


def load_source(model: str | Path, input_size: int | None = None, labels: list[str] | None = None) -> SourceModel:
    from ..training import load_keras_model

    validate_source(model, input_size)
    path, directory = resolve_model_path(model)
    meta_path = directory / MODEL_METADATA
    keras_model = load_keras_model(path)
    if meta_path.exists():
        metadata = read_model_metadata(directory)
        recipe = Preprocessing.from_dict(metadata["preprocessing"])
        if input_size and tuple(recipe.input_size) != (input_size, input_size):
            raise UsageError(f"--input-size {input_size} disagrees with {meta_path} "
                             f"({recipe.input_size[0]}x{recipe.input_size[1]})")
        names = labels or metadata.get("labels")
        logits_layer = (metadata.get("output") or {}).get("logits_layer")
    else:  # foreign models go through exporting.sources, which states their recipe
        raise UsageError(f"{directory}: no {MODEL_METADATA}; export it through exporting.sources")
    n_out = int(keras_model.outputs[0].shape[-1])
    names = list(names) if names else [f"class_{i}" for i in range(n_out)]
    if len(names) != n_out:
        raise UsageError(f"{len(names)} labels given for a model with {n_out} outputs")
    if logits_layer and not _has_layer(keras_model, logits_layer):
        raise UsageError(f"{path}: no layer {logits_layer!r} (edgetl.json output.logits_layer)")
    shape = tuple(keras_model.inputs[0].shape[1:3])
    if None not in shape and shape != tuple(recipe.input_size):
        raise UsageError(f"{path}: model input is {shape[0]}x{shape[1]} but the recipe says "
                         f"{recipe.input_size[0]}x{recipe.input_size[1]}")
    return SourceModel(keras_model, path, metadata, recipe, names, logits_layer)


def _has_layer(model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)


def logits_submodel(model, logits_layer: str | None):
    """``model`` cut at ``logits_layer`` (edgetl.json ``output.logits_layer``); the model itself without one."""
    import keras

    if not logits_layer:
        return model
    return keras.Model(model.inputs, model.get_layer(logits_layer).output, name="logits_model")


def output_model(source: SourceModel):
    """Float input (normalised, as the runtime prepares it) -> logits, or probabilities for stacks;
    for an ONNX source, its TensorFlow twin (``sources.onnx_source.tf_graph``, NHWC)."""
    if source.source_kind == "onnx":
        from .sources.onnx_source import tf_graph

        return tf_graph(source)
    return logits_submodel(source.model, source.logits_layer)


def pixel_input_model(source: SourceModel, dtype: str = "uint8"):
    """Raw 0..255 pixels (after resize/crop) -> normalisation conv -> the output model.

    ``dtype="uint8"``: a uint8 input plus a cast, for float and fp16/dynamic artifacts.
    ``dtype="float32"``: a float input taking 0..255 values, for TFLite full-integer conversion, where
    the converter itself makes the input uint8 (``inference_input_type``) with scale 1 and zero point 0
    (the calibrated range is exactly 0..255), so a raw pixel feeds through unchanged.
    """
    import keras

    from ..layers import normalization_layer

    inner = output_model(source)
    height, width = source.input_size
    inputs = keras.Input((height, width, 3), dtype=dtype, name=INPUT_NAME)
    x = keras.ops.cast(inputs, "float32") if dtype != "float32" else inputs
    x = normalization_layer(source.recipe, name="normalize")(x)
    outputs = inner(x)
    return keras.Model(inputs, outputs, name="pixel_input_model")
