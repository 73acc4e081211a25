"""Where an export starts: the "model source", picked in one place from what the user passed (as
NNCF picks its backend from the model's type).

* ``keras``: an edgetl model directory (``model.keras`` + ``edgetl.json``) or any ``.keras`` file;
* ``savedmodel``: a TensorFlow SavedModel directory (``saved_model.pb``), run through Keras/TF;
* ``onnx``: an ``.onnx`` file (PyTorch, timm, ...): ONNX Runtime is its reference.

Each source module offers ``peek(config) -> ModelFacts`` (cheap, no TensorFlow: the input size and
layout the recipe needs before calibration images are decoded) and ``load(config) -> SourceModel``.
A source without ``edgetl.json`` is foreign: its preprocessing must be stated (``preprocess_presets``)
and its output kind is detected (``foreign``).
"""

from __future__ import annotations

from pathlib import Path

from ...errors import UsageError
from ...metadata import MODEL_METADATA

KINDS = ("keras", "savedmodel", "onnx")


def pick(model: Path) -> str:
    model = Path(model)
    if model.suffix.lower() == ".onnx":
        return "onnx"
    if model.is_dir() and (model / "saved_model.pb").is_file():
        return "savedmodel"
    if model.is_dir() or model.suffix == ".keras":
        return "keras"
    raise UsageError(f"{model}: expected a model directory (model.keras + edgetl.json), a .keras file, "
                     f"a SavedModel directory or an .onnx file")


def _module(kind: str):
    if kind == "onnx":
        from . import onnx_source as module
    elif kind == "savedmodel":
        from . import savedmodel_source as module
    else:
        from . import keras_source as module
    return module


def has_edgetl_metadata(model: Path) -> bool:
    model = Path(model)
    return pick(model) == "keras" and ((model if model.is_dir() else model.parent) / MODEL_METADATA).exists()


def validate(config) -> None:
    """Before TensorFlow: the file is there and readable, and a foreign model says how it wants its pixels."""
    from . import foreign

    kind = pick(config.model)
    if has_edgetl_metadata(config.model):
        foreign.refuse_stated_for_edgetl_model(config)
    else:
        foreign.require_stated(config)
    _module(kind).validate(config)
    if not has_edgetl_metadata(config.model):
        recipe(config)  # the stated recipe at the model's size: its errors before anything runs


def recipe(config):
    """The preprocessing recipe, without TensorFlow where the source allows (calibration needs it first)."""
    from ...metadata import read_model_metadata
    from ...preprocess import Preprocessing

    if has_edgetl_metadata(config.model):
        directory = config.model if config.model.is_dir() else config.model.parent
        return Preprocessing.from_dict(read_model_metadata(directory)["preprocessing"])
    facts = _module(pick(config.model)).peek(config)
    return config.preprocessing.recipe(facts.size, config.input_size, facts.layout)


def load(config):
    """The ``SourceModel`` export works from."""
    return _module(pick(config.model)).load(config)
