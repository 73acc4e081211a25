"""The ONNX source: a classifier exported from PyTorch/timm (or anything else) as an ``.onnx`` file.

ONNX Runtime FP32 on the given file is the reference every artifact is compared with. The ONNX and
OpenVINO backends start from the file itself (``fp32_file``); TFLite starts from its TensorFlow twin,
made by ``onnx2tf`` (NCHW -> NHWC, a SavedModel wrapped as a Keras model: ``tf_graph``). Chosen over
onnx-tf (archived in 2023, TF 2.x < 2.16 only) and ai-edge-torch (needs the PyTorch model, not the
ONNX file): onnx2tf is maintained, converts the transposes away so TFLite runs NHWC natively, and
installs beside TensorFlow 2.21 with ``--no-deps`` plus onnx-graphsurgeon, sng4onnx, sne4onnx and
tf-keras (its pinned requirements would downgrade TensorFlow).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import tempfile
import weakref
from pathlib import Path

import numpy as np

from ...errors import UsageError
from . import foreign
from .foreign import ModelFacts

CONVERTER_RECURSION_LIMIT = 10_000  # deep graphs walked recursively by onnx2tf; Python 3.11 frames are cheap
# Highest default-domain opset the converters here read (onnx2tf and OpenVINO 2026 lag ORT a little).
MAX_OPSET = 21


def load_model(path: Path):
    import onnx

    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise UsageError(f"{path}: not a readable ONNX file ({str(exc).splitlines()[0][:150]})") from None


def _dims(value) -> list:
    shape = value.type.tensor_type
    if not shape.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.shape.dim]


def check_classifier(model, path: Path) -> tuple[list, list]:
    """(input dims, output dims) of a single-input, single 2-D output image classifier; else one line."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        raise UsageError(f"{path}: not an image classifier: {len(inputs)} inputs "
                         f"({', '.join(v.name for v in inputs)}); edgetl exports models with one image input")
    if len(model.graph.output) != 1:
        raise UsageError(f"{path}: not an image classifier: {len(model.graph.output)} outputs; expected one "
                         f"(batch, classes) output")
    in_dims, out_dims = _dims(inputs[0]), _dims(model.graph.output[0])
    if in_dims is None or out_dims is None:
        raise UsageError(f"{path}: input or output has a dynamic rank; export it with a fixed "
                         f"(batch, 3, H, W) input and a (batch, classes) output")
    if len(in_dims) != 4 or 3 not in (in_dims[1], in_dims[3]):
        raise UsageError(f"{path}: input {inputs[0].name} has shape {in_dims}; expected an RGB image batch "
                         f"(N, 3, H, W) or (N, H, W, 3)")
    if len(out_dims) != 2 or not out_dims[1]:
        raise UsageError(f"{path}: output {model.graph.output[0].name} has shape {out_dims}; "
                         f"not a classifier's (batch, classes)")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > MAX_OPSET:
        raise UsageError(f"{path}: opset {opset} is newer than the converters here read (<= {MAX_OPSET}); "
                         f"export it again with opset_version={MAX_OPSET} or lower")
    return in_dims, out_dims


def validate(config) -> None:
    check_classifier(load_model(config.model), config.model)
    if any(d == "uint8" for d in config.input_dtypes):
        raise UsageError("--input-dtype uint8 is for Keras models; an ONNX model is exported with its float input")
    if config.qat_epochs or config.accuracy_aware:
        raise UsageError("--qat-epochs and --accuracy-aware need a Keras model; an ONNX model takes plain PTQ")
    if config.target and config.target != "cpu" and not _npu_target(config.target):
        raise UsageError(f"--target {config.target} needs a Keras model for now (an ONNX model takes npu:qnn-htp "
                         f"and the Ethos-U targets); export it with --format")


def _npu_target(name: str) -> bool:
    """npu:qnn-htp (the given file quantized to QDQ, NCHW kept) or an Ethos-U target (Vela compiles the
    full-integer TFLite made from onnx2tf's NHWC twin, ``tf_graph``)."""
    from ... import targets

    return name not in targets.KINDS and (name == "npu:qnn-htp" or bool(targets.get(name).vela_config))


def peek(config) -> ModelFacts:
    in_dims, _ = check_classifier(load_model(config.model), config.model)
    layout = "NCHW" if in_dims[1] == 3 else "NHWC"
    size = tuple(in_dims[2:4]) if layout == "NCHW" else tuple(in_dims[1:3])
    return ModelFacts(None if None in size else size, layout)


def load(config):
    from .. import sources
    from ..keras_graph import SourceModel

    model = load_model(config.model)
    _, out_dims = check_classifier(model, config.model)
    facts = peek(config)
    names = foreign.labels(config, int(out_dims[1]))
    output = model.graph.output[0].name
    softmax = any(node.op_type == "Softmax" and output in node.output for node in model.graph.node)
    return SourceModel(None, config.model, {"backbone": None, "foreign": True}, sources.recipe(config), names,
                       None, source_kind="onnx", graph_softmax=softmax, layout=facts.layout)


def to_layout(batch: np.ndarray, layout: str) -> np.ndarray:
    """NHWC model inputs (what ``Preprocessing.normalize`` makes) in ``layout``."""
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2)) if layout == "NCHW" else batch


def reference(source, inputs: np.ndarray, batch: int = 32) -> np.ndarray:
    """ONNX Runtime FP32 of the given file on NHWC model inputs (the reference of every artifact)."""
    from ...runtime.backends import open_backend

    backend = open_backend(source.path, "cpu")
    return np.concatenate([np.asarray(backend.run(to_layout(inputs[i:i + batch], source.layout)), np.float32)
                           for i in range(0, len(inputs), batch)])


def fp32_file(source, work: Path) -> Path:
    """A copy of the given file with its batch dimension named ``batch`` and its output named as the
    sidecar says (``logits`` / ``probabilities``): what the ONNX backend quantizes and OpenVINO reads."""
    from ..backends.onnx import _name_output_and_batch

    path = work / "onnx_source_fp32.onnx"
    if not path.exists():
        shutil.copyfile(source.path, path)
        _name_output_and_batch(path, source.output_kind)
    return path


def tf_graph(source):
    """The ONNX model as a Keras model taking NHWC input (onnx2tf's SavedModel behind ``TFSMLayer``),
    made once per source; what the TFLite backend converts."""
    if getattr(source, "_tf_graph", None) is not None:
        return source._tf_graph
    import keras

    folder = Path(tempfile.mkdtemp(prefix="edgetl-onnx2tf-"))
    weakref.finalize(source, shutil.rmtree, str(folder), True)
    saved = folder / "saved_model"
    # onnx2tf sets Python's recursion limit to the C int maximum when imported: left so, any deep
    # recursion later in this process (a hostile JSON file, a deep graph) overflows the C stack and kills
    # the process instead of raising RecursionError. Its conversion gets a raised but finite limit.
    limit = sys.getrecursionlimit()
    try:
        import onnx2tf
    except ImportError:
        raise UsageError("TFLite from an ONNX model needs onnx2tf: pip install 'edgetl[onnx-in]'") from None
    finally:
        sys.setrecursionlimit(limit)
    try:
        sys.setrecursionlimit(max(limit, CONVERTER_RECURSION_LIMIT))
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            onnx2tf.convert(input_onnx_file_path=str(source.path), output_folder_path=str(saved),
                            non_verbose=True, output_signaturedefs=True, copy_onnx_input_output_names_to_tflite=True,
                            disable_model_save=False, not_use_onnxsim=True)
    except SystemExit as exc:  # onnx2tf exits on what it cannot convert
        raise UsageError(f"{source.path}: onnx2tf cannot convert this model (exit {exc.code})") from None
    except Exception as exc:
        raise UsageError(f"{source.path}: onnx2tf cannot convert this model "
                         f"({str(exc).splitlines()[0][:150]})") from None
    finally:
        sys.setrecursionlimit(limit)
    height, width = source.recipe.input_size
    inputs = keras.Input((height, width, 3), name="image")
    outputs = keras.layers.TFSMLayer(str(saved), call_endpoint="serving_default")(inputs)
    if isinstance(outputs, dict):
        outputs = next(iter(outputs.values()))
    source._tf_graph = keras.Model(inputs, outputs, name="onnx2tf")
    return source._tf_graph
