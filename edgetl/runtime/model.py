"""``EdgeModel``: one exported artifact + its sidecar, as a classifier that takes images.

numpy + Pillow + one runtime package; never TensorFlow or Keras (see ``edgetl.runtime``).
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import numpy as np
from PIL import Image

from ..errors import CheckFailed, UsageError
from ..metadata import check_description, compiled_for_npu, read_sidecar, verify_artifact
from ..metrics import softmax
from ..preprocess import IMAGE_SUFFIXES, DecodeRules, ImageDecodeError, Preprocessing, to_pil
from .backends import Backend, artifact_format, open_backend

ImageLike = Union[str, Path, Image.Image, np.ndarray]
Prediction = list[tuple[str, float]]

class EdgeModel:
    """An exported classifier: ``EdgeModel.load(path)``, then ``predict(images, top_k)``.

    Preprocessing is replayed from the sidecar recipe (resize shorter side, centre crop, normalise,
    layout). Paths and PIL images always go through resize + crop, as do arrays of any other size; an
    HxWx3 uint8 array of exactly ``input_size`` is taken as already resized and cropped. A uint8-input
    artifact gets those pixels as they are (normalisation is in its graph; a scale-1/zero-0 input
    quantization changes nothing); an int8-input artifact gets the normalised floats quantized with
    the sidecar's ``input.quantization`` scale/zero point; a float artifact gets the normalised floats.
    Logits outputs get a numpy softmax; probabilities are returned as they are.

    Thread safety: ``predict``/``predict_batch``/``run`` may be called from several threads on one
    model. Preprocessing runs in parallel; the runtime call is lock-free for ONNX Runtime (its
    ``InferenceSession.run`` is thread-safe) and serialised by a per-model lock for LiteRT and
    OpenVINO. For parallel throughput on those, load one ``EdgeModel`` per thread.
    """

    def __init__(self, backend: Backend, metadata: dict[str, Any], path: Path):
        self.path = path
        self.backend = backend
        self.metadata = metadata
        self.labels: list[str] = list(metadata.get("labels") or [])
        if not self.labels:
            raise CheckFailed(f"{path}: its sidecar lists no labels")
        self.recipe = Preprocessing.from_dict(metadata.get("preprocessing") or {})
        spec = metadata.get("input") or {}
        self.layout = str(spec.get("layout") or self.recipe.layout).upper()
        if self.layout not in ("NHWC", "NCHW"):
            raise CheckFailed(f"{path}: unsupported input layout {self.layout!r} in its sidecar")
        self.input_dtype = backend.input_dtype
        declared = spec.get("dtype")
        if declared and np.dtype(declared) != backend.input_dtype:
            raise CheckFailed(f"{path}: the sidecar says input dtype {declared} but the artifact takes "
                              f"{backend.input_dtype}; re-export it")
        quant = spec.get("quantization") or None
        self._input_quant = None
        if quant and np.issubdtype(self.input_dtype, np.integer) and self.input_dtype != np.uint8:
            self._input_quant = (np.asarray(quant["scale"], np.float32),
                                 np.asarray(quant["zero_point"], np.float32))
        # uint8 input means "raw pixels, normalisation folded into the graph" (sidecar contract).
        self._feeds_pixels = self.input_dtype == np.uint8
        self.output_kind = (metadata.get("output") or {}).get("kind", "probabilities")
        if self.output_kind not in ("logits", "probabilities"):
            raise CheckFailed(f"{path}: unknown output kind {self.output_kind!r} in its sidecar")
        self._check_input_size()
        # calls into a backend that is not reentrant (Backend.reentrant) are serialised by a lock
        self._lock = contextlib.nullcontext() if backend.reentrant else threading.Lock()

    @classmethod
    def load(cls, artifact: str | Path, device: str = "cpu", threads: int | None = None, verify: bool = True,
             **backend_options) -> "EdgeModel":
        """Open ``.onnx`` (onnxruntime), ``.tflite`` (LiteRT) or ``.xml`` (OpenVINO) with its sidecar.

        ``device`` is cpu, gpu or npu (the runtime's own providers/devices; ``DeviceUnavailable`` if
        it has none); ``threads`` fixes the runtime's intra-op thread count. ``backend_options`` go to
        the backend: ``exact_int8=False`` lets ONNX Runtime use its faster, saturating INT8 kernels on
        x86 CPUs without VNNI (``edgetl.runtime.cpu``; artifacts exported with ``--int8-weights
        pair-safe`` get them by default, exactly); ``precision=None`` lets OpenVINO pick bf16.
        ``verify`` checks every file of the artifact against the sha256 its sidecar records
        (``CheckFailed`` on a mismatch); ``verify=False`` skips that (costs are in
        tools/RESULTS-runtime.md).
        """
        _check_load_arguments(artifact, device, threads, verify)
        path = Path(artifact)
        fmt = artifact_format(path)
        metadata = _sidecar_or_embedded(path)
        if metadata.get("format") not in (None, fmt):
            raise UsageError(f"{path}: its sidecar describes a {metadata['format']} artifact, not {fmt}")
        npu_only = compiled_for_npu(path, metadata) if device != "npu" else None
        if npu_only:
            raise UsageError(npu_only)
        if verify:
            verify_artifact(path, metadata)
        return cls(open_backend(path, device=device, threads=threads, **backend_options), metadata, path)

    # -- properties --------------------------------------------------------------------------------
    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the model takes, after resize and crop."""
        return tuple(self.recipe.input_size)

    @property
    def format(self) -> str:
        return self.backend.format

    def __repr__(self) -> str:
        return (f"EdgeModel({str(self.path)!r}, format={self.format}, input={self.input_size} "
                f"{self.input_dtype}, {len(self.labels)} labels)")

    # -- inference ---------------------------------------------------------------------------------
    def prepare(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """Images -> the artifact's input batch (dtype, layout, quantization as the sidecar says)."""
        items = _as_list(images)[0]
        height, width = self.input_size
        pixels = np.empty((len(items), height, width, 3), np.uint8)
        for i, image in enumerate(items):
            _check_array(image)
            if _is_cropped_pixels(image, (height, width)):
                pixels[i] = image  # already resized and cropped (e.g. a camera pipeline's crop)
            else:
                pixels[i] = self.recipe.resize_and_crop(_decode(image, self.recipe.decode))
        if self._feeds_pixels:
            batch = pixels
        else:
            batch = self.recipe.normalize(pixels)
            if self._input_quant is not None:
                scale, zero = self._input_quant
                info = np.iinfo(self.input_dtype)
                batch = np.clip(np.round(batch / scale + zero), info.min, info.max)
            batch = batch.astype(self.input_dtype, copy=False)
        if self.layout == "NCHW":
            batch = batch.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(batch)

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Raw outputs (float32, N x classes) for a batch already in the artifact's input format."""
        self._check_batch(inputs)
        with self._lock:
            outputs = self.backend.run(inputs)
        outputs = outputs.reshape(outputs.shape[0], -1)
        if outputs.shape[1] != len(self.labels):
            raise CheckFailed(f"{self.path}: the model outputs {outputs.shape[1]} scores but its sidecar "
                              f"has {len(self.labels)} labels")
        return outputs

    def probabilities(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """N x classes probabilities; one runtime call per image (see ``predict_batch`` to batch)."""
        items = _as_list(images)[0]
        return np.concatenate([self._probabilities(self.prepare([image])) for image in items]) \
            if items else np.zeros((0, len(self.labels)), np.float32)

    def predict(self, images: ImageLike | Sequence[ImageLike], top_k: int = 5):
        """Top-k ``(label, score)`` pairs: a list for one image, a list of such lists for several."""
        items, single = _as_list(images)
        if not items:
            raise UsageError("predict: no images given")
        _check_top_k(top_k)
        results = [self._top_k(self._probabilities(self.prepare([image]))[0], top_k) for image in items]
        return results[0] if single else results

    def predict_batch(self, images: Sequence[ImageLike], top_k: int = 5,
                      batch_size: int = 32) -> list[Prediction]:
        """Like ``predict`` on a list, in batches of ``batch_size`` when the artifact's batch dimension
        is dynamic (one image per call otherwise). Always returns one list per image."""
        items = _as_list(images)[0]
        _check_top_k(top_k)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise UsageError(f"batch_size must be a positive integer, got {batch_size!r}")
        step = max(1, int(batch_size)) if self.backend.dynamic_batch else 1
        results: list[Prediction] = []
        for start in range(0, len(items), step):
            probs = self._probabilities(self.prepare(items[start:start + step]))
            results += [self._top_k(row, top_k) for row in probs]
        return results

    def _probabilities(self, batch: np.ndarray) -> np.ndarray:
        outputs = self.run(batch)
        return softmax(outputs) if self.output_kind == "logits" else outputs

    def _top_k(self, scores: np.ndarray, top_k: int) -> Prediction:
        _check_top_k(top_k)
        k = min(int(top_k), len(scores))
        # Stable sort: ties keep label order, so results are deterministic.
        order = np.argsort(-scores, kind="stable")[:k]
        return [(self.labels[i], float(scores[i])) for i in order]

    def _check_input_size(self) -> None:
        shape = self.backend.input_shape
        if len(shape) != 4:
            raise CheckFailed(f"{self.path}: expected a 4-D image input, the artifact takes {shape}")
        spatial = shape[1:3] if self.layout == "NHWC" else shape[2:4]
        if all(d is not None for d in spatial) and tuple(spatial) != self.input_size:
            raise CheckFailed(f"{self.path}: the artifact takes {tuple(spatial)} images but its sidecar "
                              f"recipe crops to {self.input_size}")


    def _check_batch(self, inputs: Any) -> None:
        """``run``'s input: a non-empty 4-D array of the artifact's input dtype, finite, of its size."""
        if not isinstance(inputs, np.ndarray):
            raise UsageError(f"run takes a numpy array (see prepare()), got {type(inputs).__name__}")
        if inputs.ndim != 4 or not inputs.shape[0]:
            raise UsageError(f"run takes a non-empty N x H x W x C batch (see prepare()), got shape {inputs.shape}")
        if inputs.dtype != self.input_dtype:
            raise UsageError(f"{self.path.name} takes {self.input_dtype} input, got {inputs.dtype} (see prepare())")
        expected = self.prepare_shape
        if tuple(inputs.shape[1:]) != expected:
            raise UsageError(f"{self.path.name} takes {expected} images, got {tuple(inputs.shape[1:])}")
        if inputs.dtype.kind == "f" and not np.isfinite(inputs).all():
            raise UsageError("run: the batch holds NaN or infinite values")

    @property
    def prepare_shape(self) -> tuple[int, int, int]:
        """One image as ``prepare`` makes it: (H, W, 3), or (3, H, W) for NCHW artifacts."""
        height, width = self.input_size
        return (3, height, width) if self.layout == "NCHW" else (height, width, 3)


def _check_load_arguments(artifact, device, threads, verify) -> None:
    if not isinstance(artifact, (str, Path)) or not str(artifact).strip():
        raise UsageError(f"EdgeModel.load takes the artifact's path, got {artifact!r}"[:200])
    if not isinstance(device, str):
        raise UsageError(f"device must be cpu, gpu or npu, got {device!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                or threads < 1):
        raise UsageError(f"threads must be a positive integer or None, got {threads!r}")
    if not isinstance(verify, bool):
        raise UsageError(f"verify must be True or False, got {verify!r}")


def _check_top_k(top_k) -> None:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise UsageError(f"top_k must be a positive integer, got {top_k!r}")


def _check_array(image) -> None:
    """An image given as an array: numbers (unsigned/signed integers or floats), HxW or HxWxC with
    C in 1, 3, 4, not empty, no NaN or infinities (they would turn into arbitrary pixels)."""
    if not isinstance(image, np.ndarray):
        return
    if image.dtype.kind not in "uif":
        raise UsageError(f"an image array must hold integers or floats, got dtype {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 3, 4)):
        raise UsageError(f"an image array is HxW or HxWx1/3/4, got shape {image.shape}")
    if image.size == 0:
        raise UsageError(f"an image array is empty (shape {image.shape})")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise UsageError("an image array holds NaN or infinite values")


def _sidecar_or_embedded(path: Path) -> dict[str, Any]:
    """The sidecar; without one, the description export embedded in the artifact (``runtime.embedded``)."""
    from ..metadata import sidecar_path
    from .embedded import read_embedded

    if path.exists() and not sidecar_path(path).exists():
        embedded = read_embedded(path)
        if embedded is not None:
            check_description(embedded, f"{path} (its embedded metadata)")
            return embedded
    return read_sidecar(path)  # raises the usual one-line errors (no artifact, no sidecar)


def _as_list(images) -> tuple[list, bool]:
    """(list of single images, whether one image was given). A 4-D array is a batch of images."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return list(images), False
    if isinstance(images, (list, tuple)):
        return list(images), False
    return [images], True


def _is_cropped_pixels(image, size: tuple[int, int]) -> bool:
    return (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape == (*size, 3))


def _decode(image: ImageLike, rules: DecodeRules) -> Image.Image:
    try:
        return to_pil(image, rules)
    except ImageDecodeError as exc:
        raise UsageError(str(exc)) from None


def iter_image_files(paths: Sequence[str | Path]) -> Iterator[tuple[Path, bool]]:
    """Expand files and directories (recursively, sorted) into ``(path, named_explicitly)``.

    Directory members are filtered by image suffix; explicitly named files are taken as given.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise UsageError(f"{path}: no images found in this folder")
            for member in found:
                yield member, False
        elif path.exists():
            yield path, True
        else:
            raise UsageError(f"{path}: no such image or folder")
