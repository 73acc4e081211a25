"""Metadata inside the artifacts, in the form each format's own clients read, besides the sidecar.

* TFLite: standard TFLite Metadata (``TFLITE_METADATA``: input normalisation and image properties,
  labels as an associated file, descriptions, version), which MediaPipe Tasks' and the TFLite Task
  Library's ``ImageClassifier`` need before they load a float-input model. Those clients show the
  output as scores, so logits models get a float ``SOFTMAX`` appended: output 0 is ``probabilities``
  (what the clients read first), output 1 the unchanged ``logits`` tensor, which edgetl reads (by
  name, ``runtime.backends``), so its own path stays exact. The softmax is float even in INT8 models:
  it reads the dequantized logits, so it costs INT8 agreement nothing (a quantized softmax would have
  TFLite's 1/256 output scale). Score calibration was not used: it is a per-class sigmoid of one logit,
  which cannot express a softmax over the classes (its scores do not sum to 1).
* ONNX: ``metadata_props`` (``onnxruntime``: ``get_modelmeta().custom_metadata_map``): ``edgetl`` (the
  description as JSON), ``labels``, ``preprocessing``, ``edgetl_schema``, ``edgetl_version``, and the
  ``model_info ...`` keys OpenVINO Model API's ONNX adapter reads.
* OpenVINO IR: ``rt_info`` ``model_info`` as OpenVINO Model API reads it for classification
  (``model_type`` Classification, labels, mean/scale values, ``resize_type`` crop,
  ``reverse_input_channels`` for its BGR (OpenCV) input), plus ``edgetl/metadata`` (JSON).

The TFLite Metadata flatbuffer is written here with the ``flatbuffers`` package (a TensorFlow and
LiteRT dependency) from ``metadata_schema.fbs``, because no maintained writer installs beside
TensorFlow 2.21: mediapipe 1.2.3's writer fails on import (``mediapipe.tasks.cc`` is not in the
wheel), mediapipe 0.10.21's would downgrade numpy to 1.26 and protobuf to 4.25, and tflite-support
0.4.4 (archived) protobuf to 3.20. The tests read the result back with MediaPipe's own generated
schema and load it in MediaPipe's ImageClassifier.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.embedded import EMBEDDED_KEY, EMBEDDED_SCHEMA, TFLITE_FILE

TFLITE_METADATA_NAME = "TFLITE_METADATA"
LABELS_FILE = "labels.txt"
PROBABILITIES = "probabilities"
LOGITS = "logits"
# Fields of the sidecar that describe the finished file itself, so they cannot be inside it.
_FILE_FIELDS = ("sha256", "size_bytes", "parity", "files")


def description(sidecar: dict[str, Any]) -> dict[str, Any]:
    """The sidecar's content that an artifact carries inside itself (see ``runtime.embedded``)."""
    import importlib.metadata

    described = {key: value for key, value in sidecar.items() if key not in _FILE_FIELDS}
    quantization = dict(described.get("quantization") or {})
    details = quantization.pop("details", None) or {}  # converter internals: the sidecar keeps them
    if details.get("int8_weights"):
        quantization["int8_weights"] = details["int8_weights"]
    described.update(schema=EMBEDDED_SCHEMA, artifact_schema=sidecar.get("schema"), quantization=quantization)
    try:
        described["edgetl_version"] = importlib.metadata.version("edgetl")
    except importlib.metadata.PackageNotFoundError:
        described["edgetl_version"] = "unknown"
    return described


def _normalisation(described: dict[str, Any]) -> tuple[list[float], list[float]]:
    """(mean, std) on 0..255 pixels the artifact's input expects; identity for uint8-input graphs,
    whose normalisation is inside the graph."""
    recipe = described["preprocessing"]
    if described["input"]["dtype"] == "uint8":
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    return [float(v) for v in recipe["mean"]], [float(v) for v in recipe["std"]]


def _summary_line(described: dict[str, Any]) -> str:
    recipe = described["preprocessing"]
    height, width = recipe["input_size"]
    backbone = (described.get("source_model") or {}).get("backbone") or "classifier"
    return (f"{backbone} fine-tuned by edgetl: {len(described['labels'])} classes "
            f"({', '.join(described['labels'][:10])}). Input: {recipe['channel_order']} {height}x{width}, "
            f"made by resizing the shorter side to {recipe['resize_shorter']} ({recipe['interpolation']}) and "
            f"centre-cropping; quantization {described['quantization'].get('mode')}.")


# -- ONNX ---------------------------------------------------------------------------------------------
def model_api_info(described: dict[str, Any]) -> dict[str, str]:
    """OpenVINO Model API's ``model_info`` for its ClassificationModel (values as the strings it parses:
    lists space-separated, so spaces inside labels become underscores)."""
    mean, std = _normalisation(described)
    recipe = described["preprocessing"]
    return {
        "model_type": "Classification",
        "labels": " ".join(label.replace(" ", "_") for label in described["labels"]),
        "mean_values": " ".join(f"{v:g}" for v in mean),
        "scale_values": " ".join(f"{v:g}" for v in std),
        # Model API hands the model OpenCV (BGR) images; an RGB model wants them reversed.
        "reverse_input_channels": str(recipe["channel_order"].upper() == "RGB"),
        "resize_type": "crop",  # shorter side to the input size, centre crop
        "pad_value": "0",
        "topk": "1",
        "output_raw_scores": "True",
    }


def embed_onnx(path: Path, described: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path))
    static_batch = described["input"]["shape"][0]
    if static_batch:
        for value in list(model.graph.input) + list(model.graph.output):
            value.type.tensor_type.shape.dim[0].dim_value = int(static_batch)
    props = {EMBEDDED_KEY: json.dumps(described, sort_keys=True), "edgetl_schema": EMBEDDED_SCHEMA,
             "edgetl_version": described["edgetl_version"], "labels": json.dumps(described["labels"]),
             "preprocessing": json.dumps(described["preprocessing"], sort_keys=True)}
    props.update({f"model_info {key}": value for key, value in model_api_info(described).items()})
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = _summary_line(described)
    _atomic_bytes(path, model.SerializeToString())


# -- OpenVINO -----------------------------------------------------------------------------------------
def embed_openvino(path: Path, described: dict[str, Any]) -> None:
    """Reads the IR, sets rt_info (and a static batch if asked), writes it back without recompressing."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    static_batch = described["input"]["shape"][0]
    if static_batch:
        model.reshape([int(static_batch), *model.input(0).get_partial_shape().to_shape()[1:]]
                      if model.input(0).get_partial_shape().is_static
                      else [int(static_batch), *described["input"]["shape"][1:]])
    for key, value in model_api_info(described).items():
        model.set_rt_info(value, ["model_info", key])
    model.set_rt_info(json.dumps(described, sort_keys=True), [EMBEDDED_KEY, "metadata"])
    model.set_rt_info(described["edgetl_version"], [EMBEDDED_KEY, "version"])
    # read_model may map the .bin: write beside it, then swap both files in.
    with tempfile.TemporaryDirectory(prefix=".edgetl-ir-", dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        ov.save_model(model, str(staged), compress_to_fp16=False)
        del model
        os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(staged, path)


# -- TFLite -------------------------------------------------------------------------------------------
def embed_tflite(path: Path, described: dict[str, Any]) -> dict[str, Any]:
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    graph = model.subgraphs[0]
    changes: dict[str, Any] = {}
    if described["output"]["kind"] == "logits" and len(graph.outputs) == 1:
        _append_softmax(model)
    output_names = [_text(graph.tensors[i].name) for i in graph.outputs]
    if output_names == [PROBABILITIES, LOGITS]:
        changes = {"name": LOGITS, "index": 1, "probabilities": {"name": PROBABILITIES, "index": 0,
                                                                  "op": "float SOFTMAX of the logits"}}
        described = {**described, "output": {**described["output"], **changes}}
    static_batch = described["input"]["shape"][0]
    if static_batch:
        for index in list(graph.inputs):
            tensor = graph.tensors[index]
            tensor.shape[0] = int(static_batch)
            if tensor.shapeSignature is not None and len(tensor.shapeSignature):
                tensor.shapeSignature[0] = int(static_batch)
    metadata = _tflite_metadata(described, output_names)
    model.buffers.append(_buffer(metadata))
    model.metadata = [m for m in (model.metadata or []) if _text(m.name) != TFLITE_METADATA_NAME]
    entry = flatbuffer_utils.schema_fb.MetadataT()
    entry.name, entry.buffer = TFLITE_METADATA_NAME, len(model.buffers) - 1
    model.metadata.append(entry)
    data = io.BytesIO(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    # Associated files: a zip archive appended to the flatbuffer (what TFLite Metadata's populator writes;
    # stored, not deflated, so clients can map the files in place).
    with zipfile.ZipFile(data, "a", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(LABELS_FILE, "\n".join(described["labels"]) + "\n")
        archive.writestr(TFLITE_FILE, json.dumps(described, indent=2, sort_keys=True))
    _atomic_bytes(path, data.getvalue())
    return changes


def _text(name) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


def _buffer(data: bytes):
    from ai_edge_litert.tools import flatbuffer_utils

    buffer = flatbuffer_utils.schema_fb.BufferT()
    buffer.data = np.frombuffer(data, np.uint8).copy()
    return buffer


def _append_softmax(model) -> None:
    """Output 0 := float SOFTMAX(logits); the logits tensor stays an output (1), renamed ``logits``."""
    from ai_edge_litert.tools import flatbuffer_utils

    fb = flatbuffer_utils.schema_fb
    graph = model.subgraphs[0]
    logits_index = graph.outputs[0]
    logits = graph.tensors[logits_index]
    if logits.type != fb.TensorType.FLOAT32:
        raise ValueError(f"logits output is {logits.type}, not float32: cannot append a float softmax")
    logits.name = LOGITS
    probabilities = fb.TensorT()
    probabilities.shape = list(logits.shape)
    probabilities.shapeSignature = list(logits.shapeSignature) if logits.shapeSignature is not None else None
    probabilities.type = fb.TensorType.FLOAT32
    probabilities.name = PROBABILITIES
    model.buffers.append(fb.BufferT())  # an empty buffer: an activation, not a constant
    probabilities.buffer = len(model.buffers) - 1
    graph.tensors.append(probabilities)
    probabilities_index = len(graph.tensors) - 1

    codes = model.operatorCodes
    softmax = fb.BuiltinOperator.SOFTMAX
    code_index = next((i for i, c in enumerate(codes)
                       if flatbuffer_utils.get_builtin_code_from_operator_code(c) == softmax), None)
    if code_index is None:
        code = fb.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = softmax, softmax, 1
        codes.append(code)
        code_index = len(codes) - 1
    operator = fb.OperatorT()
    operator.opcodeIndex = code_index
    operator.inputs, operator.outputs = [logits_index], [probabilities_index]
    operator.builtinOptionsType = fb.BuiltinOptions.SoftmaxOptions
    operator.builtinOptions = fb.SoftmaxOptionsT()
    operator.builtinOptions.beta = 1.0
    graph.operators.append(operator)
    graph.outputs = [probabilities_index, logits_index]
    for signature in model.signatureDefs or []:
        entry = fb.TensorMapT()
        entry.name, entry.tensorIndex = PROBABILITIES, probabilities_index
        signature.outputs = [entry] + [o for o in (signature.outputs or []) if o.tensorIndex != probabilities_index]


# metadata_schema.fbs (file identifier "M001"), written field by field: slot numbers are the fields'
# positions in their tables; a union takes two slots (type, then value).
_ASSOCIATED_UNKNOWN, _TENSOR_AXIS_LABELS = 0, 2
_CONTENT_IMAGE = 2
_UNIT_NORMALIZATION = 1
_COLOR_RGB = 1
MIN_PARSER_VERSION = "1.0.0"  # nothing below needs a newer parser (no tensor groups, no custom metadata)


def _tflite_metadata(described: dict[str, Any], output_names: list[str]) -> bytes:
    import flatbuffers

    b = flatbuffers.Builder(1024)

    def string(text):
        return b.CreateString(text) if text is not None else None

    def vector(offsets):
        b.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            b.PrependUOffsetTRelative(offset)
        return b.EndVector()

    def floats(values):
        b.StartVector(4, len(values), 4)
        for value in reversed(values):
            b.PrependFloat32(float(value))
        return b.EndVector()

    def table(fields):
        """fields: (slot, kind, value) with kind offset | uint8 | uint32; None values are left out."""
        b.StartObject(max(slot for slot, _, _ in fields) + 1)
        for slot, kind, value in fields:
            if value is None:
                continue
            if kind == "offset":
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "uint8":
                b.PrependUint8Slot(slot, value, 255)  # default never equal: always written
            else:
                b.PrependUint32Slot(slot, value, 0xFFFFFFFF)
        return b.EndObject()

    def associated_file(name, text, kind):
        return table([(0, "offset", string(name)), (1, "offset", string(text)), (2, "uint8", kind)])

    recipe = described["preprocessing"]
    height, width = recipe["input_size"]
    mean, std = _normalisation(described)
    lowest = [(0.0 - m) / s for m, s in zip(mean, std)]
    highest = [(255.0 - m) / s for m, s in zip(mean, std)]

    # input: an RGB image, normalised (x - mean) / std unless the graph takes uint8 pixels
    size = table([(0, "uint32", width), (1, "uint32", height)])
    image_properties = table([(0, "uint8", _COLOR_RGB), (1, "offset", size)])
    input_content = table([(0, "uint8", _CONTENT_IMAGE), (1, "offset", image_properties)])
    units = []
    if described["input"]["dtype"] != "uint8":
        normalization = table([(0, "offset", floats(mean)), (1, "offset", floats(std))])
        units.append(table([(0, "uint8", _UNIT_NORMALIZATION), (1, "offset", normalization)]))
    stats = table([(0, "offset", floats(highest)), (1, "offset", floats(lowest))])
    crop = (f"centre crop {height}x{width} after resizing the shorter side to {recipe['resize_shorter']}"
            if recipe.get("resize_shorter") else f"resized to {height}x{width}")
    input_meta = table([
        (0, "offset", string("image")),
        (1, "offset", string(f"{recipe['channel_order']} image, {crop}"
                             + ("" if described["input"]["dtype"] == "uint8" else
                                f"; (pixel - {mean}) / {std}"))),
        (3, "offset", input_content),
        (4, "offset", vector(units) if units else None),
        (5, "offset", stats),
    ])

    texts = {PROBABILITIES: "Probabilities of the classes (float softmax of the logits output).",
             LOGITS: "Logits (what edgetl reads; softmax of these is the probabilities output)."}
    outputs = []
    for name in output_names:
        kind = name if name in texts else described["output"]["kind"]
        labels = associated_file(LABELS_FILE, "Labels of the classes, one per line, in output order.",
                                 _TENSOR_AXIS_LABELS)
        probability_stats = table([(0, "offset", floats([1.0])), (1, "offset", floats([0.0]))]) \
            if kind == PROBABILITIES else None
        outputs.append(table([
            (0, "offset", string(kind)),
            (1, "offset", string(texts.get(kind, "Class scores."))),
            (5, "offset", probability_stats),
            (6, "offset", vector([labels])),
        ]))
    subgraph = table([(0, "offset", string("image_classifier")),
                      (2, "offset", vector([input_meta])), (3, "offset", vector(outputs))])
    edgetl_file = associated_file(TFLITE_FILE, "edgetl's description of this artifact (labels, "
                                  "preprocessing recipe, quantization, versions): edgetl reads it when "
                                  "the sidecar is missing.", _ASSOCIATED_UNKNOWN)
    source = described.get("source_model") or {}
    version = f"edgetl {described['edgetl_version']}, model sha256 {str(source.get('sha256', ''))[:16]}"
    root = table([
        (0, "offset", string(f"{source.get('backbone') or 'image'} classifier")),
        (1, "offset", string(_summary_line(described))),
        (2, "offset", string(version)),
        (3, "offset", vector([subgraph])),
        (4, "offset", string("edgetl")),
        (6, "offset", vector([edgetl_file])),
        (7, "offset", string(MIN_PARSER_VERSION)),
    ])
    b.Finish(root, file_identifier=b"M001")
    return bytes(b.Output())


def _atomic_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
