"""Typed metadata (``edgetl.metadata.ModelCard`` / ``ArtifactSidecar``): real documents written by
finetune and export round-trip through the dataclasses byte for byte, and a wrong field is one line
naming the file and the field. Reuses the session's tiny model and its exported artifacts."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from edgetl.choices import Format
from edgetl.errors import UsageError
from edgetl.metadata import (MODEL_METADATA, MODEL_SCHEMA, ArtifactSidecar, ModelCard, read_json,
                             read_model_card, read_model_metadata, sidecar_path)


def _canonical(data) -> str:
    return json.dumps(data, sort_keys=True)


def test_model_card_round_trips_finetune_output_byte_for_byte(tiny_model_dir, tmp_path):
    raw = read_json(tiny_model_dir / MODEL_METADATA)
    card = read_model_card(tiny_model_dir)
    assert _canonical(card.to_dict()) == _canonical(raw)
    assert list(card.to_dict()) == list(raw)  # the file's key order too
    assert card.labels == raw["labels"] and card.model_sha256 == raw["model_sha256"] and card.extra == {}
    assert card.recipe.input_size == tuple(raw["preprocessing"]["input_size"])
    assert card.logits_layer == "logits" and card.backbone_names == ["efficientnet_lite0"]
    assert card.val_accuracy == raw["metrics"]["val_accuracy"]
    # write() gives back the very bytes finetune wrote
    written = card.write(tmp_path / "copy")
    assert written.read_bytes() == (tiny_model_dir / MODEL_METADATA).read_bytes()
    # unknown keys survive in extra, in place
    future = {**raw, "future_field": {"a": [1, 2]}}
    again = ModelCard.from_dict(future, "edgetl.json")
    assert again.extra == {"future_field": {"a": [1, 2]}}
    assert json.dumps(again.to_dict()) == json.dumps(future)
    # a field set later comes after the file's keys; nothing else moves
    pruned = dataclasses.replace(card, pruning={"method": "magnitude"}).to_dict()
    assert list(pruned) == [*raw, "pruning"] and pruned["labels"] == raw["labels"]


def test_artifact_sidecars_round_trip_byte_for_byte(exported_artifacts, tmp_path):
    artifacts = sorted(p for p in exported_artifacts.iterdir()
                       if p.suffix in (".onnx", ".tflite", ".xml") and sidecar_path(p).is_file())
    assert {p.suffix for p in artifacts} == {".onnx", ".tflite", ".xml"} and len(artifacts) == 6
    for artifact in artifacts:
        raw = read_json(sidecar_path(artifact))
        sidecar = ArtifactSidecar.read(artifact)
        assert _canonical(sidecar.to_dict()) == _canonical(raw), artifact.name
        assert sidecar.format in set(Format) and sidecar.file == artifact.name and sidecar.extra == {}
        assert sidecar.mode == ("none" if "fp32" in artifact.name else "int8")
        assert sidecar.input_dtype == raw["input"]["dtype"] and sidecar.files[artifact.name] == raw["sha256"]
        copy = tmp_path / artifact.name
        shutil.copy(artifact, copy)
        sidecar.write(copy)
        assert sidecar_path(copy).read_bytes() == sidecar_path(artifact).read_bytes(), artifact.name


def _one_line_error(call, *words) -> str:
    with pytest.raises(UsageError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    return message


def test_wrong_field_is_one_line_naming_file_and_field(tiny_model_dir, tmp_path):
    raw = read_json(tiny_model_dir / MODEL_METADATA)
    path = tmp_path / MODEL_METADATA
    _one_line_error(lambda: ModelCard.from_dict({**raw, "labels": "ants"}, path), str(path), "'labels'")
    _one_line_error(lambda: ModelCard.from_dict({**raw, "backbone": 5}, path), str(path), "'backbone'", "string")
    _one_line_error(lambda: ModelCard.from_dict({**raw, "dataset": []}, path), "'dataset'", "object")
    bad = {**raw, "preprocessing": {**raw["preprocessing"], "input_size": [96]}}
    _one_line_error(lambda: ModelCard.from_dict(bad, path), "'preprocessing.input_size'")
    # the same file through the typed reader; the dict reader keeps its own (older, looser) checks
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / MODEL_METADATA).write_text(json.dumps({**raw, "backbone": ["a", "b"]}))
    _one_line_error(lambda: read_model_card(model), str(model / MODEL_METADATA), "'backbone'")
    assert read_model_metadata(model)["backbone"] == ["a", "b"]  # the dict reader checks what it did before

    sidecar = {"schema": "edgetl.artifact/1", "format": "onxx", "labels": ["a"]}
    _one_line_error(lambda: ArtifactSidecar.from_dict(sidecar, "m.onnx.json"), "m.onnx.json", "'format'", "onxx")
    _one_line_error(lambda: ArtifactSidecar.from_dict({**sidecar, "format": "onnx", "size_bytes": "12"},
                                                      "m.onnx.json"), "'size_bytes'")
    _one_line_error(lambda: ArtifactSidecar.from_dict({"schema": "edgetl.model/1"}, Path("m.onnx.json")),
                    "not an edgetl artifact sidecar")


def test_new_card_writes_known_fields_in_order_without_nulls():
    card = ModelCard(labels=["ants", "bees"], preprocessing={"input_size": [96, 96]}, backbone="x",
                     metrics={"val_accuracy": 0.5})
    assert card.to_dict() == {"schema": MODEL_SCHEMA, "labels": ["ants", "bees"],
                              "preprocessing": {"input_size": [96, 96]}, "backbone": "x",
                              "metrics": {"val_accuracy": 0.5}}
    assert list(card.to_dict()) == ["schema", "labels", "preprocessing", "backbone", "metrics"]
    assert ModelCard.from_dict(card.to_dict()).to_dict() == card.to_dict()
