"""``export(config)``: a trained model -> ONNX / TFLite / OpenVINO artifacts, FP32 or quantized, each with
a sidecar (``<artifact>.json``) and a parity check against the Keras FP32 model.

One call writes ``<out>/model_<format>_<mode>[_u8].<ext>`` for every format x mode x input dtype asked
for, plus ``calibration.json`` (INT8) and ``export_summary.json``, all into a temporary directory that
replaces ``out`` only when everything was written: a failure leaves nothing half-written. A parity
failure still writes the artifacts (marked ``passed: false``) and then raises ``CheckFailed`` (exit 1).

This module is format-free: each format is an ``ExportBackend`` (``exporting.backends``) and
``ExportJob`` is the per-call state the backends work from.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..choices import InputDtype, Mode
from ..console import progress, say
from ..metadata import atomic_directory, write_json
from ..preprocess import Preprocessing
from .backends import ExportBackend, get_backend
from .config import ExportConfig
from .formats import CALIBRATION_FILE, SUMMARY_FILE, artifact_name
from .parity import describe
from .results import ArtifactResult, ExportResult
from .scratch import scratch_folder
from .sidecar import write_artifact_sidecar


def export(config: ExportConfig) -> ExportResult:
    """Convert, quantize, measure parity and describe; see the module docstring."""
    config.validate()
    if config.target and config.target != "cpu":
        from .target import export_target

        return export_target(config)
    calib = load_calibration_for(config) if (Mode.INT8 in config.modes or config.calib is not None) else None
    started = time.perf_counter()
    job = ExportJob.start(config, calib)
    result = ExportResult(Path(config.out), calibration=calib.summary() if calib else None,
                          compared_on=job.images.compared_on)
    with atomic_directory(config.out, overwrite=config.overwrite, inputs=config.inputs(), verb="export") as tmp, \
            scratch_folder(tmp, config.out) as work_dir:
        job.work, job.out = work_dir, tmp
        if calib:
            write_json(tmp / CALIBRATION_FILE, calib.manifest)
        total = len(config.input_dtypes) * len(config.formats) * len(config.modes)
        with progress(total, "export", enabled=config.verbose) as bar:
            for input_dtype in config.input_dtypes:
                for fmt in config.formats:
                    for mode in config.modes:
                        bar.describe(f"export {artifact_name(fmt, mode, input_dtype)}: convert, "
                                     f"{'calibrate, ' if mode == Mode.INT8 else ''}measure parity")
                        artifact = job.build(fmt, mode, input_dtype)
                        result.artifacts.append(artifact)
                        bar.advance()
                        if config.verbose:
                            bar.print(f"{artifact.path.name}: {artifact.size_bytes / 1e6:.2f} MB, "
                                      f"{describe(artifact.parity)} "
                                      f"[{'ok' if artifact.passed else 'FAILED'}] ({artifact.seconds:.1f}s)")
        write_json(tmp / SUMMARY_FILE, result.summary())
    result.moved_to(config.out)
    if config.verbose:
        say(f"export done in {time.perf_counter() - started:.0f}s -> {config.out}")
    result.raise_if_failed(describe)
    return result


def recipe_without_tensorflow(config: ExportConfig) -> Preprocessing:
    from . import sources

    return sources.recipe(config)


def load_calibration_for(config: ExportConfig):
    """The calibration set (``--calib``), decoded with the model's recipe, before TensorFlow loads."""
    from .calibration import load_calibration

    return load_calibration(config.calib, recipe_without_tensorflow(config), config.calib_size)


class ExportJob:
    """One export call's state, handed to the backends: the source model, calibration set, parity images
    and their Keras reference, the work and output folders, and the intermediates made once per call
    (``cached``: the Keras graph per input dtype, FP32 ONNX / IR, ORT calibration ranges)."""

    def __init__(self, config: ExportConfig, source, calib, images, reference: np.ndarray):
        from .pairs import target_cpu

        self.config, self.source, self.calib, self.images, self.reference = config, source, calib, images, reference
        self.source_info = source.describe()
        self.work: Path | None = None
        self.out: Path | None = None
        self.target_cpu = target_cpu(config.target_cpu)  # "this" is read from the exporting CPU once
        self._cache: dict[Any, Any] = {}

    @classmethod
    def start(cls, config: ExportConfig, calib) -> "ExportJob":
        """Load the model, choose the parity images, compute the Keras reference on them."""
        from . import sources
        from .parity import keras_reference, parity_images

        source = sources.load(config)
        images = parity_images(config, source, calib)
        if config.verbose:
            say(f"parity images: {images.compared_on}")
        reference = keras_reference(source, images)
        if source.foreign:  # what it outputs, found on the check images (sources.foreign)
            from .sources.foreign import output_kind

            source.detected_kind, source.kind_reason = output_kind(source.graph_softmax, reference,
                                                                   config.output_kind, str(config.model))
            if config.verbose:
                say(f"output: {source.detected_kind} ({source.kind_reason})")
        return cls(config, source, calib, images, reference)

    # what the backends use
    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def keras_graph(self, input_dtype: str):
        """The graph converters receive: the output model, or behind a uint8 input (``keras_graph``)."""
        from .keras_graph import output_model, pixel_input_model

        if input_dtype == InputDtype.UINT8:
            return self.cached(("keras", input_dtype), lambda: pixel_input_model(self.source, "uint8"))
        return self.cached(("keras", input_dtype), lambda: output_model(self.source))

    def int8_weights(self, backend: ExportBackend) -> str | None:
        from .pairs import resolve

        return resolve(self.config.int8_weights, backend.format, self.target_cpu)

    def model_inputs(self, input_dtype: str, layout: str = "NHWC") -> np.ndarray:
        """The parity images as the artifact takes them: raw pixels (uint8 input) or normalised, in ``layout``."""
        if input_dtype == InputDtype.UINT8:
            return self.images.pixels
        inputs = self.source.recipe.normalize(self.images.pixels)
        return np.ascontiguousarray(inputs.transpose(0, 3, 1, 2)) if layout == "NCHW" else inputs

    def layout(self, backend: ExportBackend) -> str:
        """The artifact's input layout: an NCHW ONNX source stays NCHW in ONNX and OpenVINO (made from the
        file itself); TFLite is NHWC (onnx2tf moves the transposes out)."""
        return self.source.layout if backend.format.value in ("onnx", "openvino") else "NHWC"

    def calib_input(self, backend: ExportBackend, input_dtype: str) -> str:
        """How calibration batches are made for this backend's graph (``calibration.prepare_batch``)."""
        return "float32_nchw" if self.layout(backend) == "NCHW" and input_dtype == "float32" else input_dtype

    def measure_parity(self, backend: ExportBackend, path: Path, mode: str, input_dtype: str) -> tuple[dict, dict]:
        """(parity block, runtime) of the artifact at ``path`` against the Keras reference."""
        from .parity import artifact_outputs, compare

        outputs, runtime = artifact_outputs(path, self.model_inputs(input_dtype, self.layout(backend)),
                                            **backend.runtime_options(self, mode))
        result = compare(self.reference, outputs, mode, self.config.min_agreement, self.images.labels)
        result.update(compared_on=self.images.compared_on, precision=runtime["precision"],
                      runtime_settings=runtime["settings"])
        return result, runtime

    # one artifact
    def build(self, fmt: str, mode: str, input_dtype: str) -> ArtifactResult:
        backend = get_backend(fmt)
        started = time.perf_counter()
        path = self.out / artifact_name(fmt, mode, input_dtype)
        details = self.with_target_cpu(backend.build(self, path, mode, input_dtype), backend, mode)
        interface = self.embed(backend, path, mode, input_dtype, details)
        parity, runtime = self.measure_parity(backend, path, mode, input_dtype)
        float_layers: list[str] = []
        if mode == Mode.INT8 and not parity["passed"] and self.config.accuracy_aware:
            from .sensitivity import make_accurate

            path, details, parity, runtime, float_layers = make_accurate(self, backend, path, input_dtype,
                                                                         details, parity)
            details = self.with_target_cpu(details, backend, mode)
            interface = self.embed(backend, path, mode, input_dtype, details, float_layers)
        sidecar = self.sidecar(backend, path, mode, input_dtype, details, parity, runtime, float_layers)
        sidecar["output"].update(interface)
        write_artifact_sidecar(path, sidecar)
        return ArtifactResult(fmt, mode, input_dtype, path, sidecar, time.perf_counter() - started)

    def with_target_cpu(self, details: dict, backend: ExportBackend, mode: str) -> dict:
        """INT8 weights are chosen for a target CPU (--target-cpu): the sidecar and the embedded
        metadata say which."""
        if mode == Mode.INT8 and self.int8_weights(backend):
            return {**details, "target_cpu": self.target_cpu}
        return details

    def embed(self, backend: ExportBackend, path: Path, mode: str, input_dtype: str, details: dict,
              float_layers: list[str] | None = None) -> dict:
        """Metadata inside the artifact for clients without the sidecar (``embedded_metadata``); returns
        the output fields it changed."""
        from .embedded_metadata import description

        draft = self.sidecar(backend, path, mode, input_dtype, details, {},
                             {"runtime": None, "runtime_version": None}, list(float_layers or []))
        return backend.embed(path, description(draft))

    def sidecar(self, backend: ExportBackend, path: Path, mode: str, input_dtype: str, details: dict,
                parity: dict, runtime: dict, float_layers: list[str]) -> dict[str, Any]:
        from .sidecar import artifact_sidecar, quantization_block

        extras = backend.sidecar_extras(path, mode, input_dtype)
        calibration = self.calib.summary() if self.calib else None
        return artifact_sidecar(
            path, backend.format.value, backend.files(path), self.source, self.source_info,
            input_names=extras["input_names"], batch=self.config.static_batch, input_dtype=input_dtype,
            layout=self.layout(backend),
            input_quantization=extras["input_quantization"], output_names=extras["output_names"],
            quantization=quantization_block(mode, (details.get("qat") or {}).get("method", extras["method"]), details,
                                            calibration, float_layers),
            parity={**parity, "runtime": runtime["runtime"], "runtime_version": runtime["runtime_version"]})
