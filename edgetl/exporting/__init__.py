"""`edgetl export`: a trained model -> ONNX / TFLite / OpenVINO artifacts, FP32 or quantized, each with a
sidecar (``<artifact>.json``) and a parity check against the Keras FP32 model.

One call writes ``<out>/model_<format>_<mode>[_u8].<ext>`` for every format x mode x input dtype asked
for, plus ``calibration.json`` (INT8) and ``export_summary.json``, all into a temporary directory that
replaces ``out`` only when everything was written: a failure leaves nothing half-written. A parity
failure still writes the artifacts (marked ``passed: false``) and then raises ``CheckFailed`` (exit 1).

Module map: ``keras_graph`` (what is converted), ``calibration``, ``onnx``, ``tflite``, ``openvino``,
``parity``, ``sensitivity`` (accuracy-aware INT8). The sidecar format is documented in models/README.md.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import CheckFailed, UsageError
from ..metadata import (ARTIFACT_SCHEMA, MODEL_METADATA, artifact_files, atomic_directory, check_output_dir,
                        hash_artifact, read_json, read_model_metadata, sidecar_path, software_versions,
                        write_json)
from ..preprocess import Preprocessing

log = logging.getLogger("edgetl")

FORMATS = ("onnx", "tflite", "openvino")
MODES = ("fp32", "fp16", "dynamic", "int8")
INPUT_DTYPES = ("float32", "uint8")
EXTENSIONS = {"onnx": ".onnx", "tflite": ".tflite", "openvino": ".xml"}
SUMMARY_FILE = "export_summary.json"
CALIBRATION_FILE = "calibration.json"


def supported_modes() -> dict[str, tuple[str, ...]]:
    """Which modes each format can produce with the installed packages."""
    import importlib.util

    onnx_modes = ["fp32", "dynamic", "int8"]
    try:
        if importlib.util.find_spec("onnxruntime.transformers.float16"):
            onnx_modes.insert(1, "fp16")
    except ImportError:
        pass
    return {"onnx": tuple(onnx_modes), "tflite": MODES, "openvino": MODES}


def _as_tuple(value: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    return tuple(dict.fromkeys(v.strip().lower() for v in value if v and v.strip()))


@dataclass
class ExportConfig:
    model: Path | None = None  # model directory (model.keras + edgetl.json) or a .keras file
    out: Path | None = None
    formats: tuple[str, ...] = ("onnx",)
    modes: tuple[str, ...] = ("fp32",)
    input_dtypes: tuple[str, ...] = ("float32",)  # "uint8": normalisation in the graph, raw pixels in
    calib: Path | None = None  # image folder (labels not needed); required for int8
    calib_size: int = 300
    calib_method: str = "minmax"  # ORT ranges: minmax | entropy | percentile (TFLite/NNCF use their own)
    check: Path | None = None  # held-back images for parity (default: the model's val split)
    min_agreement: float = 0.98
    accuracy_aware: bool = False
    # int8 weights for ONNX and OpenVINO: auto | full | pair-safe | 7-bit (see export/pairs.py)
    int8_weights: str = "auto"
    # the CPU the artifacts are made for: any | vnni | no-vnni | arm | this (see export/pairs.py)
    target_cpu: str = "any"
    opset: int = 17
    static_batch: int | None = None  # a fixed batch size in the artifacts (benchmark_app, NPU compilers)
    input_size: int | None = None  # for models without edgetl.json
    labels: tuple[str, ...] = ()
    overwrite: bool = True
    verbose: bool = True
    # --target (edgetl.targets): what that target runs instead of --format/--quantize (export/target.py)
    target: str | None = None
    soc: str | None = None  # npu:qnn-htp: Snapdragon to compile the EPContext model for (export/qnn.py)
    qnn_scheme: str = "edgetl"  # export/qnn.py QNN_SCHEMES
    system_config: str | None = None  # npu:ethos-u*: Vela system config / memory mode (default: Vela's)
    memory_mode: str | None = None
    allow_cpu_fallback: bool = False  # ops the NPU cannot take: an error unless allowed
    # Aliases other stages use: model_dir= for model=, quantize= ("none" = fp32) for modes=.
    model_dir: Path | None = None
    quantize: str | tuple[str, ...] | None = None

    def __post_init__(self):
        self.model = self.model if self.model is not None else self.model_dir
        if self.model is None or self.out is None:
            raise UsageError("export needs a model (model directory or .keras file) and an output folder")
        self.model, self.out = Path(self.model), Path(self.out)
        self.model_dir = self.model
        if self.quantize is not None:
            self.modes = self.quantize
        self.formats, self.modes = _as_tuple(self.formats), _as_tuple(self.modes)
        self.modes = tuple(dict.fromkeys("fp32" if m == "none" else m for m in self.modes))
        self.input_dtypes = tuple("uint8" if d in ("u8", "uint8") else d for d in _as_tuple(self.input_dtypes))
        self.calib = Path(self.calib) if self.calib else None
        self.check = Path(self.check) if self.check else None
        self.labels = tuple(self.labels or ())

    def validate(self) -> None:
        """Everything checkable without TensorFlow, before anything is written."""
        from .onnx import CALIBRATION_METHODS
        from .pairs import INT8_WEIGHTS, TARGET_CPUS
        from .keras_graph import check_source

        for kind, values, allowed in (("format", self.formats, FORMATS), ("mode", self.modes, MODES),
                                      ("input dtype", self.input_dtypes, INPUT_DTYPES)):
            if not values:
                raise UsageError(f"no {kind} given; choose from {', '.join(allowed)}")
            unknown = [v for v in values if v not in allowed]
            if unknown:
                raise UsageError(f"unknown {kind} {unknown[0]!r}; choose from {', '.join(allowed)}")
        support = supported_modes()
        for fmt in self.formats:
            for mode in self.modes:
                if mode not in support[fmt]:
                    able = [f for f in FORMATS if mode in support[f]]
                    raise UsageError(f"--quantize {mode} is not supported for {fmt} here; "
                                     f"formats that support it: {', '.join(able)}")
        if self.calib_method not in CALIBRATION_METHODS:
            raise UsageError(f"unknown calibration method {self.calib_method!r}; choose from "
                             f"{', '.join(CALIBRATION_METHODS)}")
        if self.int8_weights not in INT8_WEIGHTS:
            raise UsageError(f"unknown --int8-weights {self.int8_weights!r}; choose from {', '.join(INT8_WEIGHTS)}")
        if self.target_cpu not in TARGET_CPUS:
            raise UsageError(f"unknown --target-cpu {self.target_cpu!r}; choose from {', '.join(TARGET_CPUS)}")
        if "int8" in self.modes and self.calib is None:
            raise UsageError("--quantize int8 needs calibration images: pass --calib DIR "
                             "(a few hundred representative images, labels not needed)")
        if not 0.0 < self.min_agreement <= 1.0:
            raise UsageError(f"--min-agreement must be in (0, 1], got {self.min_agreement}")
        if self.static_batch is not None and self.static_batch < 1:
            raise UsageError(f"--static-batch must be >= 1, got {self.static_batch}")
        if self.calib_size < 1:
            raise UsageError(f"--calib-size must be >= 1, got {self.calib_size}")
        if self.check is not None and not self.check.is_dir():
            raise UsageError(f"--check folder {self.check} does not exist")
        check_source(self.model, self.input_size)
        check_output_dir(self.out, self.inputs(), self.overwrite)

    def inputs(self) -> tuple[Path | None, ...]:
        """What --out may not be, hold or lie inside: the model (its directory), calibration and check
        folders, and the data set whose val split parity reads."""
        dataset_root = None
        meta = (self.model if self.model.is_dir() else self.model.parent) / MODEL_METADATA
        if self.model.is_dir() and meta.is_file():
            try:
                dataset_root = (read_json(meta).get("dataset") or {}).get("root")
            except (OSError, ValueError, AttributeError):
                pass
        return (self.model, self.calib, self.check, dataset_root)


@dataclass
class ArtifactResult:
    format: str
    mode: str
    input_dtype: str
    path: Path
    sidecar: dict[str, Any]
    seconds: float

    @property
    def parity(self) -> dict[str, Any]:
        return self.sidecar["parity"]

    @property
    def passed(self) -> bool:
        return bool(self.parity.get("passed"))

    @property
    def size_bytes(self) -> int:
        return self.sidecar["size_bytes"]


@dataclass
class ExportResult:
    out: Path
    artifacts: list[ArtifactResult] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    compared_on: str = ""

    @property
    def failed(self) -> list[ArtifactResult]:
        return [a for a in self.artifacts if not a.passed]

    def get(self, fmt: str, mode: str, input_dtype: str = "float32") -> ArtifactResult:
        for artifact in self.artifacts:
            if (artifact.format, artifact.mode, artifact.input_dtype) == (fmt, mode, input_dtype):
                return artifact
        raise KeyError((fmt, mode, input_dtype))

    def table(self) -> str:
        """Markdown table of what was written."""
        rows = ["| artifact | MB | vs fp32 | top-1 agreement | max abs diff | cosine | passed |",
                "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for a in self.artifacts:
            base = next((b for b in self.artifacts if (b.format, b.mode, b.input_dtype)
                         == (a.format, "fp32", a.input_dtype)), None)
            ratio = f"{a.size_bytes / base.size_bytes:.2f}x" if base else "-"
            p = a.parity
            rows.append(f"| {a.path.name} | {a.size_bytes / 1e6:.2f} | {ratio} | {p['top1_agreement']:.3f} | "
                        f"{p['max_abs_diff']:.2e} | {p['cosine']:.5f} | {'yes' if a.passed else 'NO'} |")
        return "\n".join(rows)

    def summary(self) -> dict[str, Any]:
        return {"schema": "edgetl.export_summary/1", "out": str(self.out), "compared_on": self.compared_on,
                "calibration": self.calibration,
                "artifacts": [{"file": a.path.name, "format": a.format, "mode": a.mode,
                               "input_dtype": a.input_dtype, "size_bytes": a.size_bytes,
                               "seconds": round(a.seconds, 2), "parity": a.parity,
                               "float_layers": a.sidecar["quantization"].get("float_layers", [])}
                              for a in self.artifacts],
                "passed": not self.failed}


def artifact_name(fmt: str, mode: str, input_dtype: str) -> str:
    return f"model_{fmt}_{mode}{'_u8' if input_dtype == 'uint8' else ''}{EXTENSIONS[fmt]}"


# -- the stage --------------------------------------------------------------------------------------
def export(config: ExportConfig) -> ExportResult:
    """Convert, quantize, check and describe; see the module docstring."""
    config.validate()
    if config.target and config.target != "cpu":
        from .target import export_target

        return export_target(config)
    recipe = _recipe_without_tensorflow(config)
    calib = None
    if "int8" in config.modes or (config.calib is not None):
        from .calibration import load_calibration

        calib = load_calibration(config.calib, recipe, config.calib_size) if config.calib else None

    from .keras_graph import load_source

    started = time.perf_counter()
    source = load_source(config.model, config.input_size, list(config.labels) or None)
    checks = _check_set(config, source, calib)
    _say(config, f"parity images: {checks.compared_on}")
    reference = _keras_reference(source, checks)
    result = ExportResult(Path(config.out), calibration=calib.summary() if calib else None,
                          compared_on=checks.compared_on)
    source_info = source.describe()

    with tempfile.TemporaryDirectory(prefix="edgetl-export-work-") as work_dir, \
            atomic_directory(config.out, overwrite=config.overwrite, inputs=config.inputs(), verb="export") as tmp:
        work = Path(work_dir)
        if calib:
            write_json(tmp / CALIBRATION_FILE, calib.manifest)
        builder = _Builder(config, source, calib, checks, reference, source_info, work, tmp)
        from ..console import progress

        total = len(config.input_dtypes) * len(config.formats) * len(config.modes)
        with progress(total, "export", enabled=config.verbose) as bar:
            for input_dtype in config.input_dtypes:
                for fmt in config.formats:
                    for mode in config.modes:
                        bar.describe(f"export {artifact_name(fmt, mode, input_dtype)}: convert, "
                                     f"{'calibrate, ' if mode == 'int8' else ''}check")
                        artifact = builder.build(fmt, mode, input_dtype)
                        result.artifacts.append(artifact)
                        bar.advance()
                        if config.verbose:
                            bar.print(f"{artifact.path.name}: {artifact.size_bytes / 1e6:.2f} MB, "
                                      f"{_parity_line(artifact.parity)} "
                                      f"[{'ok' if artifact.passed else 'FAILED'}] ({artifact.seconds:.1f}s)")
        write_json(tmp / SUMMARY_FILE, result.summary())
    for artifact in result.artifacts:  # paths point into the final directory, not the temp one
        artifact.path = Path(config.out) / artifact.path.name
    _say(config, f"export done in {time.perf_counter() - started:.0f}s -> {config.out}")
    if result.failed:
        worst = result.failed[0]
        error = CheckFailed(f"{len(result.failed)} artifact(s) failed parity (written, marked failing): "
                            + "; ".join(f"{a.path.name} {_parity_line(a.parity)}" for a in result.failed[:3])
                            + f" (threshold {worst.parity['threshold']})")
        error.result = result
        raise error
    return result


def _parity_line(parity: dict[str, Any]) -> str:
    from .parity import describe

    return describe(parity)


def _say(config: ExportConfig, message: str) -> None:
    if config.verbose:
        from ..console import say

        say(message)


def _recipe_without_tensorflow(config: ExportConfig) -> Preprocessing:
    directory = config.model if config.model.is_dir() else config.model.parent
    if (directory / MODEL_METADATA).exists():
        return Preprocessing.from_dict(read_model_metadata(directory)["preprocessing"])
    return Preprocessing().with_input_size(config.input_size)


def _check_set(config: ExportConfig, source, calib):
    """Held-back images: --check DIR, else the model's own val split, else the calibration images."""
    from ..data import load_pixels, scan_unlabelled
    from .parity import CheckSet

    def labels_for(paths: list[Path], root: Path) -> np.ndarray | None:
        index = {name: i for i, name in enumerate(source.labels)}
        found = [index.get(p.relative_to(root).parts[0]) if len(p.relative_to(root).parts) > 1 else None
                 for p in paths]
        return None if any(f is None for f in found) else np.asarray(found)

    if config.check is not None:
        paths, _ = scan_unlabelled(config.check)
        if not paths:
            raise UsageError(f"--check folder {config.check} has no usable image")
        return CheckSet(load_pixels(paths, source.recipe), labels_for(paths, config.check),
                        f"--check {config.check} ({len(paths)} images)", paths)
    dataset = source.metadata.get("dataset") or {}
    root, files = dataset.get("root"), (dataset.get("val") or {}).get("files") or []
    if root and files and all((Path(root) / f).exists() for f in files):
        paths = [Path(root) / f for f in files]
        return CheckSet(load_pixels(paths, source.recipe), labels_for(paths, Path(root)),
                        f"val split of {root} ({len(paths)} images)", paths)
    if calib is not None:
        return CheckSet(calib.pixels, None, f"calibration images ({len(calib)}; no held-back set found)",
                        calib.paths)
    raise UsageError("no images to check parity on: the model's val split is not on this machine; "
                     "pass --check DIR (or --calib DIR)")


def _keras_reference(source, checks) -> np.ndarray:
    from .keras_graph import output_model
    from .parity import keras_outputs

    return keras_outputs(output_model(source), source.recipe.normalize(checks.pixels))


class _Builder:
    """Builds one artifact at a time; caches the per-input-dtype intermediates (Keras graph, FP32 ONNX,
    FP32 OpenVINO IR, ORT calibration ranges) in ``work`` so each is made once per call."""

    def __init__(self, config, source, calib, checks, reference, source_info, work: Path, out: Path):
        self.config, self.source, self.calib, self.checks = config, source, calib, checks
        self.reference, self.source_info, self.work, self.out = reference, source_info, work, out
        self._cache: dict[Any, Any] = {}
        from .pairs import target_cpu

        self.target_cpu = target_cpu(config.target_cpu)  # "this" is read from the exporting CPU once

    # intermediates
    def keras_graph(self, input_dtype: str, tflite_int8: bool = False):
        from .keras_graph import output_model, pixel_input_model

        key = ("keras", input_dtype, tflite_int8)
        if key not in self._cache:
            if input_dtype == "float32":
                self._cache[key] = output_model(self.source)
            else:
                self._cache[key] = pixel_input_model(self.source, "float32" if tflite_int8 else "uint8")
        return self._cache[key]

    def onnx_fp32(self, input_dtype: str) -> tuple[Path, dict]:
        from . import onnx as onnx_export

        key = ("onnx", input_dtype)
        if key not in self._cache:
            path = self.work / f"onnx_fp32_{input_dtype}.onnx"
            details = onnx_export.convert(self.keras_graph(input_dtype), path, input_dtype, self.config.opset,
                                          output_name=self.source.output_kind)
            self._cache[key] = (path, details)
        return self._cache[key]

    def onnx_ranges(self, input_dtype: str) -> tuple[Path, Path]:
        from . import onnx as onnx_export

        key = ("ranges", input_dtype)
        if key not in self._cache:
            fp32, _ = self.onnx_fp32(input_dtype)
            pre = self.work / f"onnx_pre_{input_dtype}.onnx"
            onnx_export.preprocess(fp32, pre)
            cache = self.work / f"onnx_ranges_{input_dtype}.json"
            onnx_export.calibrate(pre, self.calib, input_dtype, self.config.calib_method, cache)
            self._cache[key] = (pre, cache)
        return self._cache[key]

    def openvino_fp32(self, input_dtype: str):
        from . import openvino as ov_export

        key = ("openvino", input_dtype)
        if key not in self._cache:
            fallback = self.work / f"onnx_fp32_{input_dtype}.onnx"
            ov_model, details = ov_export.convert(self.keras_graph(input_dtype), input_dtype,
                                                  self.source.output_kind, fallback)
            path = self.work / f"openvino_fp32_{input_dtype}.xml"
            ov_export.save(ov_model, path)
            self._cache[key] = (path, details)
        return self._cache[key]

    def read_openvino(self, input_dtype: str):
        import openvino as ov

        path, _ = self.openvino_fp32(input_dtype)
        return ov.Core().read_model(str(path))

    # one artifact
    def build(self, fmt: str, mode: str, input_dtype: str) -> ArtifactResult:
        started = time.perf_counter()
        path = self.out / artifact_name(fmt, mode, input_dtype)
        details = self.with_target_cpu(getattr(self, f"_build_{fmt}")(path, mode, input_dtype), fmt, mode)
        interface = self.embed(path, fmt, mode, input_dtype, details)
        parity_result, runtime = self.check(path, mode, input_dtype)
        float_layers: list[str] = []
        if mode == "int8" and not parity_result["passed"] and self.config.accuracy_aware:
            from .sensitivity import make_accurate

            path, details, parity_result, runtime, float_layers = make_accurate(
                self, fmt, input_dtype, path, details, parity_result)
            details = self.with_target_cpu(details, fmt, mode)
            interface = self.embed(path, fmt, mode, input_dtype, details, float_layers)
        sidecar = self.sidecar(path, fmt, mode, input_dtype, details, parity_result, runtime, float_layers)
        sidecar["output"].update(interface)
        write_json(sidecar_path(path), sidecar)
        return ArtifactResult(fmt, mode, input_dtype, path, sidecar, time.perf_counter() - started)

    def with_target_cpu(self, details: dict, fmt: str, mode: str) -> dict:
        """INT8 weights are chosen for a target CPU (--target-cpu): the sidecar and the embedded
        metadata say which."""
        if mode == "int8" and self.int8_weights(fmt):
            return {**details, "target_cpu": self.target_cpu}
        return details

    def embed(self, path: Path, fmt: str, mode: str, input_dtype: str, details: dict,
              float_layers: list[str] | None = None) -> dict:
        """Metadata inside the artifact for clients without the sidecar (``embedded_metadata``); returns
        the output fields it changed (TFLite: a probabilities output 0, logits 1)."""
        from .embedded_metadata import description, embed

        draft = self.sidecar(path, fmt, mode, input_dtype, details, {},
                             {"runtime": None, "runtime_version": None}, list(float_layers or []))
        return embed(path, fmt, description(draft))

    def int8_weights(self, fmt: str) -> str | None:
        from .pairs import resolve

        return resolve(self.config.int8_weights, fmt, self.target_cpu)

    def backend_options(self, path: Path, mode: str) -> dict:
        """Run an artifact as the runtime will once its sidecar is written: pair-safe ONNX INT8 weights on
        ONNX Runtime's fast kernels, which are exact for them (``runtime.backends.open_backend``)."""
        if path.suffix == ".onnx" and mode == "int8" and self.int8_weights("onnx") == "pair-safe":
            return {"exact_int8": False}
        return {}

    def check(self, path: Path, mode: str, input_dtype: str) -> tuple[dict, dict]:
        from .parity import artifact_outputs, compare

        inputs = self.checks.pixels if input_dtype == "uint8" else self.source.recipe.normalize(self.checks.pixels)
        outputs, runtime = artifact_outputs(path, inputs, **self.backend_options(path, mode))
        result = compare(self.reference, outputs, mode, self.config.min_agreement, self.checks.labels)
        result.update(compared_on=self.checks.compared_on, precision=runtime["precision"],
                      runtime_settings=runtime["settings"])
        return result, runtime

    def _build_onnx(self, path: Path, mode: str, input_dtype: str, exclude: list[str] | None = None,
                    quant_format: str = "QDQ") -> dict:
        from . import onnx as onnx_export

        fp32, details = self.onnx_fp32(input_dtype)
        details = dict(details)
        if mode == "fp32":
            shutil.copyfile(fp32, path)
        elif mode == "fp16":
            details.update(onnx_export.to_fp16(fp32, path))
        elif mode == "dynamic":
            details.update(onnx_export.quantize_dynamic(fp32, path))
        else:
            pre, cache = self.onnx_ranges(input_dtype)
            details.update(onnx_export.quantize_int8(pre, path, cache, self.config.calib_method, exclude,
                                                     quant_format, self.int8_weights("onnx")))
        return details

    def _build_tflite(self, path: Path, mode: str, input_dtype: str, fallback: str | None = None,
                      float_nodes: list[str] | None = None) -> dict:
        from . import tflite as tflite_export

        mode = fallback or mode
        # Full-integer uint8 input: the converter makes the uint8 tensor itself from a float graph fed
        # 0..255 pixels (see keras_graph.pixel_input_model); other modes take the uint8+cast graph.
        int8_pixels = mode == "int8" and input_dtype == "uint8"
        graph = self.keras_graph(input_dtype, tflite_int8=int8_pixels)
        calib_input = "pixels_float" if int8_pixels else "float32"
        return tflite_export.convert(graph, path, mode, self.calib, calib_input, uint8_input=int8_pixels,
                                     float_nodes=float_nodes, output_name=self.source.output_kind)

    def _build_openvino(self, path: Path, mode: str, input_dtype: str, ignored: list[str] | None = None) -> dict:
        from . import openvino as ov_export

        _, details = self.openvino_fp32(input_dtype)
        details = dict(details)
        model = self.read_openvino(input_dtype)
        if mode == "fp32":
            ov_export.save(model, path)
        elif mode == "fp16":
            ov_export.save(model, path, compress_to_fp16=True)
            details["weights"] = "float16 (compress_to_fp16)"
        elif mode == "dynamic":
            model, extra = ov_export.compress_weights(model)
            ov_export.save(model, path)
            details.update(extra)
        else:
            model, extra = ov_export.quantize_int8(model, self.calib, input_dtype, ignored,
                                                   self.int8_weights("openvino"))
            ov_export.save(model, path)
            details.update(extra)
        return details

    # description
    def sidecar(self, path: Path, fmt: str, mode: str, input_dtype: str, details: dict, parity_result: dict,
                runtime: dict, float_layers: list[str]) -> dict[str, Any]:
        height, width = self.source.input_size
        input_quant = None
        if fmt == "tflite" and mode == "int8" and input_dtype == "uint8":
            from .tflite import input_quantization

            input_quant = input_quantization(path)
        files = hash_artifact(path)  # every file of the artifact (OpenVINO: .xml and .bin)
        from .io_names import io_names

        names = io_names(path, fmt)
        return {
            "schema": ARTIFACT_SCHEMA,
            "format": fmt,
            "file": path.name,
            "files": files,
            "sha256": files[path.name],  # the main file, for readers older than `files`
            "size_bytes": sum(f.stat().st_size for f in artifact_files(path)),
            "labels": list(self.source.labels),
            # names: what this format's client API sees (export.io_names), e.g. TFLite signature keys
            "input": {**names["input"], "shape": [self.config.static_batch, height, width, 3], "layout": "NHWC",
                      "dtype": input_dtype, "quantization": input_quant},
            "output": {**names["output"], "kind": self.source.output_kind, "dtype": "float32",
                       "softmax": "apply in float" if self.source.output_kind == "logits" else "in graph"},
            "preprocessing": self.source.recipe.to_dict(),
            "quantization": {
                "mode": "none" if mode == "fp32" else mode,
                "method": _method_name(fmt, mode),
                "per_channel": mode == "int8",
                "details": details,
                "calibration": self.calib.summary() if (self.calib and mode == "int8") else None,
                "float_layers": float_layers,
            },
            "source_model": {"sha256": self.source_info["sha256"], "path": self.source_info["path"],
                             "backbone": self.source_info["backbone"]},
            "versions": software_versions(["tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "openvino",
                                           "nncf", "ai-edge-litert"]),
            "parity": {**parity_result, "runtime": runtime["runtime"],
                       "runtime_version": runtime["runtime_version"]},
        }


def _method_name(fmt: str, mode: str) -> str | None:
    return {
        ("onnx", "fp16"): "onnxruntime.transformers.float16",
        ("onnx", "dynamic"): "onnxruntime quantize_dynamic",
        ("onnx", "int8"): "onnxruntime quantize_static (QDQ, U8S8)",
        ("tflite", "fp16"): "tflite float16 weights",
        ("tflite", "dynamic"): "tflite dynamic range",
        ("tflite", "int8"): "tflite full integer",
        ("openvino", "fp16"): "openvino compress_to_fp16",
        ("openvino", "dynamic"): "nncf.compress_weights INT8",
        ("openvino", "int8"): "nncf.quantize",
    }.get((fmt, mode))


__all__ = ["ExportConfig", "ExportResult", "ArtifactResult", "export", "FORMATS", "MODES", "artifact_name"]

