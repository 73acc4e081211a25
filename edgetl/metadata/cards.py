"""The two metadata documents as typed dataclasses (timm ``PretrainedCfg`` style).

* ``ModelCard``: ``edgetl.json`` of a model directory (schema ``edgetl.model/1``), written by finetune
  and prune, read by export, prune, bench and search.
* ``ArtifactSidecar``: ``<artifact>.json`` next to every exported artifact (schema
  ``edgetl.artifact/1``), read by the runtime and the bench.

Both are in ``models/README.md``. ``from_dict`` checks the fields the readers rely on (one line naming
the file and the field); ``to_dict`` gives back exactly the JSON it was read from: keys it does not
know stay in ``extra``, and the key order of the file is kept, so a card rewritten with one field
changed differs from the original in that field only. Nested records (``input``, ``dataset``,
``quantization``, ``parity``, ...) stay plain dicts, as they are in the file.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import UsageError
from .files import read_json, write_json

MODEL_METADATA = "edgetl.json"
MODEL_FILE = "model.keras"
MODEL_SCHEMA = "edgetl.model/1"
ARTIFACT_SCHEMA = "edgetl.artifact/1"

_BOOKKEEPING = ("extra", "key_order")


@dataclass(kw_only=True)
class _Document:
    """What both documents share: unknown keys (``extra``) and the key order of the file read."""

    extra: dict[str, Any] = field(default_factory=dict)
    key_order: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def _field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name not in _BOOKKEEPING]

    @classmethod
    def _from_checked(cls, data: dict[str, Any]):
        known = cls._field_names()
        data = copy.deepcopy(data)  # the document owns its nested records
        return cls(**{name: data.get(name) for name in known},
                   extra={k: v for k, v in data.items() if k not in known}, key_order=tuple(data))

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: keys of the file read first, in its order; then fields set since (in
        field order, ``None`` left out) and keys added to ``extra``."""
        values = {name: getattr(self, name) for name in self._field_names()}
        out: dict[str, Any] = {}
        for key in self.key_order:
            if key in values:
                out[key] = values[key]
            elif key in self.extra:
                out[key] = self.extra[key]
        for key, value in values.items():
            if key not in out and value is not None:
                out[key] = value
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return copy.deepcopy(out)

    # Both subclasses declare ``preprocessing`` and ``output`` (a model card requires the recipe; a
    # sidecar of an old export may lack it, which reads as the default recipe).
    @property
    def recipe(self):
        from ..preprocess import Preprocessing

        return Preprocessing.from_dict(self.preprocessing or {})

    @property
    def output_kind(self) -> str:
        return (self.output or {}).get("kind", "probabilities")


def _expect(data: dict[str, Any], name: str, types: tuple[type, ...], what: str, path: str | Path) -> None:
    """``data[name]`` is absent, null or one of ``types`` (bool never counts as a number)."""
    value = data.get(name)
    if value is None:
        return
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise UsageError(f"{path}: field '{name}' must be {what}, got {type(value).__name__}")


def check_model_metadata(data: Any, path: str | Path) -> None:
    """Required fields: ``labels`` (non-empty list of names), ``preprocessing.input_size`` ([H, W]
    positive integers); ``output`` and ``dataset`` must be objects when present."""
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object, got {type(data).__name__}")
    from .validate import check_labels, check_recipe

    labels = data.get("labels")
    if labels is None:
        raise UsageError(f"{path}: field 'labels' is missing (a non-empty list of class names)")
    check_labels(labels, path)
    recipe = data.get("preprocessing")
    size = recipe.get("input_size") if isinstance(recipe, dict) else None
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        field = "preprocessing" if not isinstance(recipe, dict) else "preprocessing.input_size"
        raise UsageError(f"{path}: field '{field}' is missing or invalid (the recipe with input_size [H, W])")
    check_recipe(recipe, path)
    for field in ("output", "dataset"):
        if field in data and data[field] is not None and not isinstance(data[field], dict):
            raise UsageError(f"{path}: field '{field}' must be an object")


def read_model_metadata(model_dir: str | Path) -> dict[str, Any]:
    """``edgetl.json`` of a model directory, checked: one line naming the file and the field when it
    is missing, not JSON, or lacks what export/prune/bench read (``check_model_metadata``)."""
    model_dir = Path(model_dir)
    path = model_dir / MODEL_METADATA
    if not path.exists():
        raise UsageError(f"{model_dir}: no {MODEL_METADATA} (not a model directory written by "
                         f"`edgetl finetune` or `edgetl prune`)")
    try:
        data = read_json(path)
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise UsageError(f"{path}: not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    check_model_metadata(data, path)
    return data


@dataclass(kw_only=True)
class ModelCard(_Document):
    """``edgetl.json``; fields in the order finetune writes them (``models/README.md``)."""

    SCHEMA: ClassVar[str] = MODEL_SCHEMA

    schema: str | None = MODEL_SCHEMA
    labels: list[str]
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    preprocessing: dict[str, Any]  # the Preprocessing recipe as written (``recipe`` gives the object)
    backbone: str | None = None
    backbones: list[str] | None = None
    weights: dict[str, Any] | None = None
    strategy: str | None = None
    unfrozen_layers: list[str] | None = None
    config: dict[str, Any] | None = None
    dataset: dict[str, Any] | None = None
    history: list[dict[str, Any]] | None = None
    metrics: dict[str, Any] | None = None
    train_seconds: float | None = None
    versions: dict[str, str] | None = None
    teacher: dict[str, Any] | None = None  # strategy distill
    model_sha256: str | None = None  # set when model.keras is written
    pruning: dict[str, Any] | None = None  # written by prune

    @classmethod
    def from_dict(cls, data: Any, path: str | Path = MODEL_METADATA) -> "ModelCard":
        check_model_metadata(data, path)
        for name in ("backbone", "strategy", "model_sha256"):
            _expect(data, name, (str,), "a string", path)
        for name in ("backbones", "unfrozen_layers", "history"):
            _expect(data, name, (list,), "a list", path)
        for name in ("input", "weights", "config", "metrics", "versions", "teacher", "pruning"):
            _expect(data, name, (dict,), "an object", path)
        _expect(data, "train_seconds", (int, float), "a number", path)
        return cls._from_checked(data)

    @classmethod
    def read(cls, path: str | Path) -> "ModelCard":
        """From a model directory (or its ``edgetl.json``)."""
        path = Path(path)
        model_dir = path.parent if path.name == MODEL_METADATA and path.is_file() else path
        return cls.from_dict(read_model_metadata(model_dir), model_dir / MODEL_METADATA)

    def write(self, path: str | Path) -> Path:
        """Atomically to ``path``: a model directory (``edgetl.json`` inside it) or the file itself."""
        path = Path(path)
        target = path if path.name == MODEL_METADATA else path / MODEL_METADATA
        write_json(target, self.to_dict())
        return target

    @property
    def logits_layer(self) -> str | None:
        return (self.output or {}).get("logits_layer")

    @property
    def backbone_names(self) -> list[str]:
        return list(self.backbones or [self.backbone])

    @property
    def val_accuracy(self) -> float | None:
        return (self.metrics or {}).get("val_accuracy")


def read_model_card(model_dir: str | Path) -> ModelCard:
    """``edgetl.json`` of a model directory as a ``ModelCard`` (``read_model_metadata``'s checks)."""
    return ModelCard.read(model_dir)


@dataclass(kw_only=True)
class ArtifactSidecar(_Document):
    """``<artifact>.json``; fields in the order export writes them (``models/README.md``)."""

    SCHEMA: ClassVar[str] = ARTIFACT_SCHEMA

    schema: str | None = ARTIFACT_SCHEMA
    format: str | None = None
    file: str | None = None
    files: dict[str, str] | list[str] | None = None  # {name: sha256}; a list of names in old sidecars
    sha256: str | None = None
    size_bytes: int | None = None
    labels: list[str] | None = None
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    preprocessing: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    source_model: dict[str, Any] | None = None
    versions: dict[str, str] | None = None
    parity: dict[str, Any] | None = None
    target: dict[str, Any] | None = None  # target artifacts (`export --target`)

    @classmethod
    def from_dict(cls, data: Any, path: str | Path = "sidecar") -> "ArtifactSidecar":
        from ..choices import values, Format

        if not isinstance(data, dict):
            raise UsageError(f"{path}: expected a JSON object, got {type(data).__name__}")
        if data.get("schema") != ARTIFACT_SCHEMA:
            raise UsageError(f"{path}: not an edgetl artifact sidecar (schema {data.get('schema')!r})")
        if data.get("format") is not None and data["format"] not in values(Format):
            raise UsageError(f"{path}: field 'format' is {data['format']!r}; expected one of "
                             f"{', '.join(values(Format))}")
        from .validate import check_description

        check_description(data, path)
        for name in ("file", "sha256"):
            _expect(data, name, (str,), "a string", path)
        _expect(data, "files", (dict, list), "an object of {name: sha256}", path)
        _expect(data, "size_bytes", (int,), "an integer", path)
        for name in ("input", "output", "preprocessing", "quantization", "source_model", "versions", "parity",
                     "target"):
            _expect(data, name, (dict,), "an object", path)
        return cls._from_checked(data)

    @classmethod
    def read(cls, artifact: str | Path) -> "ArtifactSidecar":
        """The sidecar of ``artifact`` (the artifact's path, as ``read_sidecar`` takes it)."""
        from .artifacts import read_sidecar, sidecar_path

        return cls.from_dict(read_sidecar(artifact), sidecar_path(artifact))

    def write(self, artifact: str | Path) -> Path:
        """Atomically next to ``artifact`` (``<artifact>.json``)."""
        from .artifacts import sidecar_path

        target = sidecar_path(artifact)
        write_json(target, self.to_dict())
        return target

    @property
    def input_dtype(self) -> str | None:
        return (self.input or {}).get("dtype")

    @property
    def mode(self) -> str:
        """``none`` (fp32), ``fp16``, ``dynamic`` or ``int8``."""
        return (self.quantization or {}).get("mode") or "none"


def read_artifact_sidecar(artifact: str | Path) -> ArtifactSidecar:
    """The sidecar of ``artifact`` as an ``ArtifactSidecar`` (``read_sidecar``'s checks first)."""
    return ArtifactSidecar.read(artifact)
