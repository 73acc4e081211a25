"""The Keras FP32 reference: which model it is, its outputs and latency, and how an artifact compares."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import UsageError
from ..metadata import MODEL_FILE, MODEL_METADATA
from ..metrics import accuracy, compare, softmax
from ..preprocess import Preprocessing
from ..timing import time_runs, timing_stats
from .inputs import InputCache, batch_of, label_indices

if TYPE_CHECKING:
    from .config import Artifact


def default_reference(artifacts: list[Artifact]) -> Path | None:
    for artifact in artifacts:
        path = source_model_dir(artifact)
        if path and path.suffix == ".onnx" and path.is_file():  # exported from an ONNX file: that file
            return path
        if path and (path / MODEL_FILE).exists() and (path / MODEL_METADATA).exists():
            return path
    return None


def source_model_dir(artifact: Artifact) -> Path | None:
    """The model directory the artifact was exported from (sidecars record the dir or its .keras file)."""
    path = (artifact.sidecar.get("source_model") or {}).get("path")
    if not path:
        return None
    path = Path(path).resolve()
    return path.parent if path.suffix == ".keras" else path


def check_reference(path: Path) -> None:
    if Path(path).suffix == ".onnx":  # an ONNX model (PyTorch, timm): ONNX Runtime FP32 is the reference
        from ..exporting.sources.onnx_source import check_classifier, load_model

        check_classifier(load_model(Path(path)), Path(path))
        return
    for name in (MODEL_FILE, MODEL_METADATA):
        if not (Path(path) / name).exists():
            raise UsageError(f"--reference {path}: not a model directory (no {name})")
    from ..metadata import read_model_metadata

    read_model_metadata(path)  # invalid edgetl.json: one line before TensorFlow loads


def reference_outputs(model_dir: Path, cache: InputCache, runs: int, warmup: int,
                      batch_sizes: Sequence[int], artifacts: Sequence[Artifact] = (), timer=None) -> dict[str, Any]:
    """FP32 Keras outputs in both spaces (logits where the model has a logits layer, probabilities),
    on the GPU when TensorFlow sees one. ``timer``: called with ``{batch size: run}`` while the model
    is loaded, returns the latency per batch size (bench times it with the artifacts, interleaved).
    An ``.onnx`` reference runs in ONNX Runtime FP32 (``onnx_reference_outputs``)."""
    if Path(model_dir).suffix == ".onnx":
        return onnx_reference_outputs(Path(model_dir), cache, runs, warmup, batch_sizes, artifacts, timer)
    import keras
    import tensorflow as tf

    from ..training import load_trained

    model, metadata = load_trained(model_dir)
    recipe = Preprocessing.from_dict(metadata["preprocessing"])
    logits_layer = (metadata.get("output") or {}).get("logits_layer")
    heads = [model.output]
    if logits_layer:
        heads.append(model.get_layer(logits_layer).output)
    both = keras.Model(model.input, heads)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:  # TensorFlow would otherwise take all GPU memory from ORT/OpenVINO sessions after it
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised by an earlier call in this process
            pass
    device = "/GPU:0" if gpus else "/CPU:0"
    inputs = cache.floats(recipe)
    with tf.device(device):
        # A traced function, as serving would run it: eager Keras calls time Python dispatch instead.
        forward = tf.function(lambda x: both(x, training=False), reduce_retracing=True)

        def call(x):
            out = forward(x)
            return [o.numpy() for o in (out if isinstance(out, (list, tuple)) else [out])]

        chunks = [call(tf.constant(inputs[i:i + 32])) for i in range(0, len(inputs), 32)]
        runners = {size: (lambda batch=tf.constant(batch_of(inputs, size)): call(batch)) for size in batch_sizes}
        if timer is not None:  # bench: timed in the same rounds as the artifacts, while the model is loaded
            latency = timer(runners)
        else:
            latency = {size: timing_stats(time_runs(run, runs, warmup)) for size, run in runners.items()}
    outputs = {"probabilities": np.concatenate([c[0] for c in chunks])}
    if logits_layer:
        outputs["logits"] = np.concatenate([c[1] for c in chunks])
    both = model = None  # drop the Keras models (and the traced function's hold on them) before clear_session
    keras.backend.clear_session()
    gc.collect()
    return {"path": str(Path(model_dir).resolve()), "labels": metadata["labels"], "outputs": outputs,
            "device": "GPU: " + gpus[0].name if gpus else "CPU",
            "backbone": metadata.get("backbone"), "latency_ms": latency,
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__}}


def onnx_reference_outputs(path: Path, cache: InputCache, runs: int, warmup: int, batch_sizes: Sequence[int],
                           artifacts: Sequence[Artifact], timer=None) -> dict[str, Any]:
    """ONNX Runtime FP32 of an ONNX model; its recipe, layout, labels and output kind from the sidecar of
    an artifact exported from it (the file itself records none of them)."""
    import onnxruntime

    from ..exporting.sources.onnx_source import check_classifier, load_model, to_layout
    from ..runtime.backends import open_backend

    made = [a for a in artifacts if source_model_dir(a) == path.resolve()] or list(artifacts)
    if not made:
        raise UsageError(f"--reference {path}: no artifact to read its preprocessing and labels from")
    sidecar = made[0].sidecar
    recipe = Preprocessing.from_dict({**sidecar["preprocessing"], "layout": "NHWC"})
    layout = "NCHW" if check_classifier(load_model(path), path)[0][1] == 3 else "NHWC"  # the file's own, whatever the artifact's
    backend = open_backend(path, "cpu")
    inputs = to_layout(cache.floats(recipe), layout)
    raw = np.concatenate([backend.run(inputs[i:i + 32]) for i in range(0, len(inputs), 32)]).astype(np.float32)
    runners = {size: (lambda b=batch_of(inputs, size): backend.run(b)) for size in batch_sizes}
    if timer is not None:  # bench: timed in the same rounds as the artifacts
        latency = timer(runners)
    else:
        latency = {size: timing_stats(time_runs(run, runs, warmup)) for size, run in runners.items()}
    kind = sidecar["output"]["kind"]
    outputs = {"probabilities": raw} if kind == "probabilities" else {"logits": raw, "probabilities": softmax(raw)}
    return {"path": str(path.resolve()), "labels": sidecar["labels"], "outputs": outputs,
            "device": "CPU (ONNX Runtime FP32)", "backbone": None, "latency_ms": latency,
            "versions": {"onnxruntime": onnxruntime.__version__}}


def compare_with_reference(artifact: Artifact, outputs: np.ndarray, reference: dict) -> dict[str, Any]:
    """Artifact outputs vs the Keras reference in the artifact's own output space, label order matched."""
    space = artifact.output_kind if artifact.output_kind in reference["outputs"] else "probabilities"
    if space != artifact.output_kind:  # logits artifact, reference without a logits layer
        outputs = softmax(outputs)
    ref_order = label_indices(artifact.sidecar["labels"], reference["labels"], reference["path"])
    return {**compare(reference["outputs"][space][:, ref_order], outputs), "space": space}




def accuracy_entry(artifact: Artifact, outputs: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """An artifact's accuracy block against ``truth`` (the data labels as the artifact's indices);
    logits are scored after the softmax, NaN/inf rows count as wrong and are counted."""
    scores = softmax(outputs) if artifact.output_kind == "logits" else outputs
    acc = accuracy(scores, truth)
    acc.pop("predictions")
    return {**acc, "n_images": int(len(truth)), "non_finite_outputs": int((~np.isfinite(outputs)).any(axis=1).sum())}


def reference_entry(reference: dict[str, Any], classes: list[str], truth: np.ndarray) -> dict[str, Any]:
    """bench.json's ``reference`` block: the reference's accuracy on the data, its device and latency."""
    mapped = label_indices(classes, reference["labels"], reference["path"])[truth]
    ref_acc = accuracy(reference["outputs"]["probabilities"], mapped)
    ref_acc.pop("predictions")
    return {"path": reference["path"], "device": reference["device"], "backbone": reference["backbone"],
            "accuracy": {**ref_acc, "n_images": int(len(truth))},
            "latency_ms": {str(k): v for k, v in reference["latency_ms"].items()},
            "versions": reference["versions"]}
