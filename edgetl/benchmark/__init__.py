"""`edgetl bench`: latency, memory, size and accuracy of exported artifacts against their Keras reference.

Every artifact runs through ``runtime.backends.open_backend`` (the same code path as export's parity
check and the device runtime) and is fed exactly what its sidecar recipe says: normalised float32, or
uint8 pixels for uint8-input artifacts (normalisation folded into the graph).

Order of work, so that a run that cannot succeed fails before it spends any time:
1. expand ARTIFACT arguments (a directory = every artifact with a sidecar in it), read sidecars;
2. check that the target has a device for every runtime involved (``DeviceUnavailable``, exit 3);
3. refuse an existing non-empty ``--out`` unless ``overwrite``; verify file hashes vs sidecars;
4. each artifact: load (cold start), node placement, accuracy pass, timed runs per batch size, peak
   RSS; then the Keras FP32 reference (outputs compared in each artifact's output space); harness
   overhead once;
5. bench.json (schema ``edgetl.bench/1``), bench.csv, report.md, report.html written atomically.

What the numbers mean:
* latency: wall time of ``backend.run(batch)`` only (input already prepared, output copied back to
  numpy); preprocessing (decode+resize+crop, normalise) is timed separately per recipe;
* load_ms: ``open_backend`` (session creation / compile); the runtime's Python module is imported
  beforehand, but a plugin's first-use initialisation (OpenVINO CPU plugin) lands in the first load;
* peak_rss_mb: this process's high-water mark during the artifact's load + runs (VmHWM reset per
  artifact on Linux), so it includes the harness and any TensorFlow already imported: compare
  ``peak_rss_mb - rss_before_mb`` across artifacts, not absolute numbers with a device;
* a target with no device for some runtime of the artifacts given fails the whole run (exit 3): a
  silently shorter report would read as "benchmarked".
"""

from __future__ import annotations

import csv
import gc
import io
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import CheckFailed, DeviceUnavailable, UsageError
from ..metadata import (MODEL_FILE, MODEL_METADATA, atomic_directory, check_output_dir, read_sidecar,
                       sidecar_path, software_versions, verify_artifact, write_json)
from ..metrics import accuracy, compare, file_sizes, softmax
from ..preprocess import Preprocessing
from ..runtime import backends
from ..runtime.cpu import cpu_model_and_flags, isa_flags
from ..timing import TIMING_KEYS, harness_overhead, time_runs, timing_stats

log = logging.getLogger("edgetl")

BENCH_SCHEMA = "edgetl.bench/1"
TARGETS = ("cpu", "gpu", "npu")
RUNTIMES = {"auto": None, "onnxruntime": "onnx", "tflite": "tflite", "litert": "tflite", "openvino": "openvino"}


def bench_schema() -> dict[str, Any]:
    """The JSON schema bench.json follows (shipped as edgetl/schemas/bench.schema.json)."""
    from importlib import resources

    return json.loads((resources.files("edgetl") / "schemas" / "bench.schema.json").read_text())


@dataclass
class BenchConfig:
    artifacts: Sequence[Path]
    data: Path
    out: Path
    target: str = "cpu"
    reference: Path | None = None  # default: source_model.path from the sidecars, when it exists
    runs: int = 50
    warmup: int = 5
    batch_sizes: Sequence[int] = (1, 8)
    threads: int | None = None
    runtime: str = "auto"
    strict: bool = False
    overwrite: bool = False
    measure_overhead: bool = True
    # ONNX Runtime INT8 on x86 without VNNI: exact U8U8 kernels (default) or the faster, saturating
    # U8S8 ones (edgetl.runtime.cpu); the choice is recorded per artifact as runtime_settings.
    exact_int8: bool = True
    # --profile: per-op profile of each artifact on its runtime (edgetl.profile)
    profile: bool = False
    profile_runs: int = 20
    # OpenVINO FP32 IRs also at the CPU plugin's own precision where it is not f32 (bf16 CPUs)
    openvino_native_precision: bool = True
    benchmark_app_seconds: int = 2  # 0: do not run benchmark_app beside edgetl's timing

    def backend_options(self, fmt: str) -> dict:
        return {"exact_int8": self.exact_int8} if fmt == "onnx" else {}

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise UsageError(f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.runtime not in RUNTIMES:
            raise UsageError(f"--runtime must be one of auto, onnxruntime, tflite, openvino, got {self.runtime!r}")
        if self.runs < 1 or self.warmup < 0:
            raise UsageError(f"--runs must be >= 1 and --warmup >= 0 (got {self.runs}, {self.warmup})")
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise UsageError(f"--batch-sizes must be positive integers, got {list(self.batch_sizes)}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")
        if not self.artifacts:
            raise UsageError("no artifact given")


@dataclass
class BenchResult:
    json: dict[str, Any]
    rows: list[dict[str, Any]]
    markdown: str
    out: Path


@dataclass
class Artifact:
    path: Path
    sidecar: dict[str, Any]
    name: str = ""  # how reports name it: the file name, or parent/file when file names collide
    options: dict[str, Any] = field(default_factory=dict)  # backend options of this variant (precision)

    @property
    def format(self) -> str:
        return self.sidecar["format"]

    @property
    def recipe(self) -> Preprocessing:
        return Preprocessing.from_dict(self.sidecar["preprocessing"])

    @property
    def takes_uint8(self) -> bool:
        return self.sidecar["input"].get("dtype") == "uint8"

    @property
    def output_kind(self) -> str:
        return self.sidecar.get("output", {}).get("kind", "probabilities")

    @property
    def quantization(self) -> str:
        return (self.sidecar.get("quantization") or {}).get("mode") or "none"

    @property
    def files(self) -> list[Path]:
        # Everything that ships to the device: OpenVINO keeps its weights in a .bin beside the .xml.
        listed = [self.path.with_name(name) for name in self.sidecar.get("files", [])]
        extra = [self.path.with_suffix(".bin")] if self.format == "openvino" else []
        return list(dict.fromkeys([self.path, *[p for p in listed + extra if p.exists()]]))


# -- 1. artifacts ------------------------------------------------------------------------------------
def expand_artifacts(paths: Sequence[str | Path], runtime: str = "auto", compiled_too: bool = False) -> list[Artifact]:
    """ARTIFACT arguments -> artifacts with their sidecars; a directory means every artifact in it."""
    wanted_format = RUNTIMES[runtime]
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix.lower() in backends.FORMAT_BY_SUFFIX
                            and sidecar_path(p).exists())
            inside = [p for p in inside if wanted_format in (None, backends.artifact_format(p))
                      and (compiled_too or _cpu_runnable(p))]
            if not inside:
                what = f"{runtime} " if wanted_format else ""
                raise UsageError(f"{path}: no {what}artifact (*.onnx, *.tflite, *.xml with a .json sidecar) in it")
            found += inside
        elif not path.exists():
            raise UsageError(f"{path}: no such artifact")
        else:
            fmt = backends.artifact_format(path)
            if wanted_format and fmt != wanted_format:
                raise UsageError(f"{path}: a {fmt} artifact cannot run on --runtime {runtime}")
            found.append(path)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    names = [p.name for p in unique]
    return [Artifact(p, read_sidecar(p), p.name if names.count(p.name) == 1 else f"{p.parent.name}/{p.name}")
            for p in unique]


def _cpu_runnable(path: Path) -> bool:
    """Compiled NPU artifacts (Vela's ethos-u op, QNN EPContext) load only with their device's runtime;
    a folder listing skips them (``edgetl bench --target npu:...`` picks them up)."""
    return (read_sidecar(path).get("target") or {}).get("cpu_runnable", True) is not False


# -- 2. devices --------------------------------------------------------------------------------------
def target_devices(target: str, available: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Per artifact format, the devices of this machine that serve ``target`` (empty list: none)."""
    return backends.target_devices(target, available)


def describe_available(available: dict[str, list[str]]) -> str:
    parts = [f"{runtime}: {', '.join(devices) or 'none'}" for runtime, devices in available.items()]
    return "; ".join(parts) or "no runtime installed"


def check_target(target: str, formats: set[str]) -> dict[str, list[str]]:
    available = backends.available_devices()
    devices = target_devices(target, available)
    missing = sorted(f for f in formats if not devices.get(f))
    if missing:
        names = ", ".join(backends.RUNTIME_BY_FORMAT[f] for f in missing)
        raise DeviceUnavailable(f"no {target} device for {names} on this machine "
                                f"(available: {describe_available(available)})")
    return devices


def verify_hashes(artifacts: list[Artifact]) -> None:
    """Every file of every artifact against its sidecar (``metadata.verify_artifact``; exit 1)."""
    for artifact in artifacts:
        verify_artifact(artifact.path, artifact.sidecar)


# -- machine -----------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    model, flags = cpu_model_and_flags()
    memory = None
    try:
        import psutil

        memory = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": model or "unknown",
        "architecture": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gib": memory,
        "isa": isa_flags(flags),
        "os": f"{platform.system()} {platform.release()}",
        # Other processes competing for the cores make every latency here slower and noisier.
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def thread_settings(threads: int | None) -> dict[str, Any]:
    return {
        "requested": threads,
        # What each runtime does when --threads is not given, so the numbers can be reproduced.
        "defaults": {"onnxruntime": "intra-op pool = physical cores", "litert": f"num_threads = {os.cpu_count()}",
                     "openvino": "INFERENCE_NUM_THREADS = plugin default (all cores)"},
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "OPENBLAS_NUM_THREADS")
                if k in os.environ},
    }


class PeakRss:
    """Peak resident memory of this process during a block.

    Linux: the high-water mark (VmHWM) is reset by writing 5 to /proc/self/clear_refs and read back
    afterwards: exact and free of sampling overhead. Elsewhere: ``ru_maxrss`` (peak since process start).
    """

    def __enter__(self) -> "PeakRss":
        self.scope = "block"
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.scope = "process"
        self.before_mb = current_rss_mb()
        self.peak_mb = self.before_mb
        return self

    def __exit__(self, *exc) -> None:
        hwm = _proc_status_mb("VmHWM") if self.scope == "block" else None
        if hwm is None:
            import resource

            self.scope = "process"
            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            hwm = kb / 1024 if sys.platform != "darwin" else kb / 2**20
        self.peak_mb = max(hwm, current_rss_mb())


def _proc_status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_rss_mb() -> float:
    rss = _proc_status_mb("VmRSS")
    if rss is None:
        import psutil

        rss = psutil.Process().memory_info().rss / 2**20
    return rss


# -- accuracy ----------------------------------------------------------------------------------------
def label_indices(data_classes: list[str], artifact_labels: list[str], artifact: Path | str) -> np.ndarray:
    """Data folder class names -> the artifact's label indices (by name, never by position)."""
    missing = [c for c in data_classes if c not in artifact_labels]
    if missing:
        raise UsageError(f"{artifact}: data classes {', '.join(missing)} are not among its labels "
                         f"({', '.join(artifact_labels)})")
    return np.asarray([artifact_labels.index(c) for c in data_classes], np.int64)


# -- inputs ------------------------------------------------------------------------------------------
class InputCache:
    """Decoded pixels per recipe (resize+crop), normalised floats per recipe; each timed once."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self._pixels: dict[str, np.ndarray] = {}
        self._floats: dict[str, np.ndarray] = {}
        self.timings: dict[str, dict[str, float]] = {}

    def pixels(self, recipe: Preprocessing) -> np.ndarray:
        from ..data import load_pixels

        key = json.dumps(recipe.to_dict(), sort_keys=True)
        if key not in self._pixels:
            start = time.perf_counter()
            self._pixels[key] = load_pixels(self.paths, recipe)
            self._timing(key)["decode_resize_crop_ms_per_image"] = (time.perf_counter() - start) * 1e3 / len(self.paths)
        return self._pixels[key]

    def floats(self, recipe: Preprocessing) -> np.ndarray:
        key = json.dumps(recipe.to_dict(), sort_keys=True)
        pixels = self.pixels(recipe)
        if key not in self._floats:
            start = time.perf_counter()
            self._floats[key] = recipe.normalize(pixels)
            self._timing(key)["normalize_ms_per_image"] = (time.perf_counter() - start) * 1e3 / len(self.paths)
        return self._floats[key]

    def inputs_for(self, artifact: Artifact) -> np.ndarray:
        return self.pixels(artifact.recipe) if artifact.takes_uint8 else self.floats(artifact.recipe)

    def _timing(self, key: str) -> dict[str, float]:
        return self.timings.setdefault(key, {"recipe": json.loads(key), "images": len(self.paths)})


def batch_of(inputs: np.ndarray, size: int) -> np.ndarray:
    """The first ``size`` images, repeated when the data set is smaller than the batch."""
    reps = -(-size // len(inputs))
    return np.ascontiguousarray(np.concatenate([inputs] * reps)[:size] if reps > 1 else inputs[:size])


def run_all(backend, inputs: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([backend.run(np.ascontiguousarray(inputs[i:i + batch]))
                           for i in range(0, len(inputs), batch)])


# -- placement ---------------------------------------------------------------------------------------
def node_placement(backend, path: Path, sample: np.ndarray, threads: int | None) -> dict[str, Any]:
    """Nodes per device as the runtime placed them (the evidence against silent CPU fallback)."""
    return backend.node_placement(sample)


def _ort_profile_nodes(backend, path: Path, sample: np.ndarray, threads: int | None) -> dict[str, int]:
    """A second session with profiling on and the same providers: one run, nodes counted per EP."""
    return backend.profile_nodes(sample)


# -- reference ---------------------------------------------------------------------------------------
def default_reference(artifacts: list[Artifact]) -> Path | None:
    for artifact in artifacts:
        path = _source_path(artifact)
        if path and (path / MODEL_FILE).exists() and (path / MODEL_METADATA).exists():
            return path
    return None


def _source_path(artifact: Artifact) -> Path | None:
    """The model directory the artifact was exported from (sidecars record the dir or its .keras file)."""
    path = (artifact.sidecar.get("source_model") or {}).get("path")
    if not path:
        return None
    path = Path(path).resolve()
    return path.parent if path.suffix == ".keras" else path


def check_reference(path: Path) -> None:
    for name in (MODEL_FILE, MODEL_METADATA):
        if not (Path(path) / name).exists():
            raise UsageError(f"--reference {path}: not a model directory (no {name})")
    from ..metadata import read_model_metadata

    read_model_metadata(path)  # invalid edgetl.json: one line before TensorFlow loads


def reference_outputs(model_dir: Path, cache: InputCache, runs: int, warmup: int,
                      batch_sizes: Sequence[int]) -> dict[str, Any]:
    """FP32 Keras outputs in both spaces (logits where the model has a logits layer, probabilities),
    on the GPU when TensorFlow sees one. Timings are eager ``model(x, training=False)`` calls."""
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
        latency = {}
        for size in batch_sizes:
            batch = tf.constant(batch_of(inputs, size))
            latency[size] = timing_stats(time_runs(lambda: call(batch), runs, warmup))
    outputs = {"probabilities": np.concatenate([c[0] for c in chunks])}
    if logits_layer:
        outputs["logits"] = np.concatenate([c[1] for c in chunks])
    del both, model
    keras.backend.clear_session()
    gc.collect()
    return {"path": str(Path(model_dir).resolve()), "labels": metadata["labels"], "outputs": outputs,
            "device": "GPU: " + gpus[0].name if gpus else "CPU",
            "backbone": metadata.get("backbone"), "latency_ms": latency,
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__}}


# -- the bench ---------------------------------------------------------------------------------------
@dataclass
class Plan:
    artifacts: list[Artifact]
    devices: dict[str, list[str]]
    reference: Path | None
    needs_tensorflow: bool


def preflight(config: BenchConfig) -> Plan:
    """Every cheap check, before any model is loaded (the CLI runs it before importing TensorFlow):
    arguments, artifacts and sidecars, target devices (exit 3), reference dir, --out refusal."""
    config.validate()
    artifacts = expand_artifacts(config.artifacts, config.runtime)
    devices = check_target(config.target, {a.format for a in artifacts})
    reference = Path(config.reference) if config.reference else default_reference(artifacts)
    if reference and reference.suffix == ".keras":  # a .keras file stands for its model directory
        reference = reference.parent
    if reference:
        check_reference(reference)
    check_output_dir(config.out, bench_inputs(config, artifacts, reference), config.overwrite)
    if not Path(config.data).is_dir():
        raise UsageError(f"data folder {config.data} does not exist")
    classes = sorted(p.name for p in Path(config.data).iterdir() if p.is_dir() and not p.name.startswith("."))
    for artifact in artifacts:  # class folders must name the artifact's labels (matched by name)
        label_indices(classes, artifact.sidecar.get("labels", []), artifact.path)
    return Plan(artifacts, devices, reference, needs_tensorflow=reference is not None)


def bench_inputs(config: BenchConfig, artifacts: list[Artifact], reference: Path | None) -> list[Path]:
    """What --out may not be, hold or lie inside: the artifacts (as given and every file of each),
    the data and the reference model."""
    return [*map(Path, config.artifacts), *(f for a in artifacts for f in a.files), Path(config.data),
            *([reference] if reference else [])]


class StrictPlacementError(CheckFailed):
    """--strict and a CPU fallback: stops the whole bench (unlike one unusable artifact)."""


def cap_batch_sizes(batch_sizes: Sequence[int], n_images: int) -> list[int]:
    """Batch sizes above the number of images are capped to it, with a warning: a larger batch would
    only repeat the same images, at the cost of its memory and time."""
    capped = sorted({min(int(b), n_images) for b in batch_sizes})
    too_big = sorted(int(b) for b in batch_sizes if int(b) > n_images)
    if too_big:
        log.warning("--batch-sizes %s larger than the %d images of --data: capped to %d",
                    ",".join(map(str, too_big)), n_images, n_images)
    return capped


def bench(config: BenchConfig) -> BenchResult:
    """Bench every artifact; one that cannot be used (hash mismatch, runtime refuses it) is reported
    as failed in bench.json/report.md while the others are benched, then ``CheckFailed`` (exit 1) is
    raised with the written result attached as ``.result``. When none can be used nothing is written."""
    plan = preflight(config)
    artifacts, devices, reference_dir = plan.artifacts, plan.devices, plan.reference
    artifacts = artifacts + _native_precision_variants(artifacts, config)
    images = _scan(config.data)
    batch_sizes = cap_batch_sizes(config.batch_sizes, len(images))
    with atomic_directory(config.out, config.overwrite, inputs=bench_inputs(config, artifacts, reference_dir),
                          verb="bench") as tmp:
        cache = InputCache(images.paths)
        truth = np.asarray(images.labels, np.int64)
        results, outputs, benched, failed = [], [], [], []
        from ..console import progress

        with progress(len(artifacts), "bench") as bar:
            for artifact in artifacts:  # artifacts first: a corrupt one fails before the Keras model loads
                log.info("bench %s on %s", artifact.name, config.target)
                bar.describe(f"bench {artifact.name}")
                try:
                    verify_hashes([artifact])
                    entry, raw = _bench_artifact(artifact, config, batch_sizes, cache, images.classes, truth)
                except StrictPlacementError:
                    raise
                except CheckFailed as exc:
                    reason = " ".join(str(exc).split())
                    log.warning("%s: not benched: %s", artifact.name, reason)
                    failed.append({"path": str(artifact.path), "name": artifact.name, "format": artifact.format,
                                   "quantization": artifact.quantization, "reason": reason})
                    continue
                finally:
                    bar.advance()
                results.append(entry)
                outputs.append(raw)
                benched.append(artifact)
        if not benched:
            raise CheckFailed(failed[0]["reason"] if len(failed) == 1 else
                              f"none of the {len(failed)} artifacts could be benched: "
                              + "; ".join(f"{f['name']}: {f['reason']}" for f in failed))
        artifacts = benched
        _benchmark_app_beside(artifacts, results, config)
        reference = None
        if reference_dir:
            log.info("reference: %s", reference_dir)
            reference = reference_outputs(reference_dir, cache, config.runs, config.warmup, batch_sizes)
            for artifact, entry, raw in zip(artifacts, results, outputs):
                # Without an explicit --reference, only artifacts exported from that model are compared.
                if config.reference or _source_path(artifact) in (None, Path(reference["path"]).resolve()):
                    entry["vs_reference"] = compare_with_reference(artifact, raw, reference)
        overhead = _overhead(artifacts[0], config, cache, batch_sizes[0]) if config.measure_overhead else None
        report = _assemble(config, artifacts, results, reference, images, cache, devices, overhead, batch_sizes)
        report["failed"] = failed
        report["settings"]["batch_sizes_requested"] = [int(b) for b in config.batch_sizes]
        from .. import report as reporting

        markdown = reporting.render_markdown(report)
        write_json(tmp / "bench.json", report)
        write_csv(tmp / "bench.csv", report["rows"])
        (tmp / "report.md").write_text(markdown)
        (tmp / "report.html").write_text(reporting.render_html(report))
    result = BenchResult(json=report, rows=report["rows"], markdown=markdown, out=Path(config.out))
    if failed:
        error = CheckFailed(f"{len(failed)} of {len(failed) + len(benched)} artifact(s) could not be benched ("
                            + "; ".join(f"{f['name']}: {f['reason']}" for f in failed)
                            + f"); the others are in {config.out}")
        error.result = result
        raise error
    return result


def _scan(data: Path):
    from ..data import scan_folder, warn_skipped

    images = scan_folder(data)
    warn_skipped(images.skipped)
    return images


def _bench_artifact(artifact: Artifact, config: BenchConfig, batch_sizes: list[int], cache: InputCache,
                    classes: list[str], truth: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    inputs = cache.inputs_for(artifact)
    labels = artifact.sidecar["labels"]
    mapped_truth = label_indices(classes, labels, artifact.path)[truth]
    with PeakRss() as memory:
        start = time.perf_counter()
        backend = backends.open_backend(artifact.path, config.target, config.threads,
                                        **config.backend_options(artifact.format), **artifact.options)
        load_ms = (time.perf_counter() - start) * 1e3
        # int8-I/O artifacts (Ethos-U) take the normalised floats; the backend quantizes them itself
        int8_io = artifact.sidecar["input"].get("dtype") == "int8" and backend.input_dtype == np.int8
        if backend.input_dtype != inputs.dtype and not int8_io:
            raise CheckFailed(f"{artifact.path}: the graph takes {backend.input_dtype} but its sidecar says "
                              f"{artifact.sidecar['input'].get('dtype')}")
        fixed = None if backend.dynamic_batch else backend.input_shape[0]
        placement = node_placement(backend, artifact.path, batch_of(inputs, fixed or 1), config.threads)
        check_placement(artifact, placement, config)  # before the timed runs: --strict fails fast
        # Accuracy pass at the largest batch the graph takes (fixed-batch graphs: their own batch).
        chunk = fixed or max(batch_sizes)
        outputs = run_all(backend, _pad(inputs, chunk) if fixed else inputs, chunk)[:len(inputs)]
        latency = {}
        for size in batch_sizes:
            if fixed and size != fixed:
                latency[size] = {"skipped": f"graph has a fixed batch of {fixed}"}
                continue
            batch = batch_of(inputs, size)
            times = time_runs(lambda: backend.run(batch), config.runs, config.warmup)
            latency[size] = {**timing_stats(times), "times_ms": times}
        version = backend.version()
        settings = dict(backend.settings)
        precision = backend.reported_precision
    del backend
    gc.collect()
    profiled = None
    if config.profile:
        from ..profile import profile_artifact

        profiled = profile_artifact(artifact.path, artifact.format, batch_of(inputs, fixed or 1), config.profile_runs,
                                    config.threads, **config.backend_options(artifact.format), **artifact.options)
    non_finite = int((~np.isfinite(outputs)).any(axis=1).sum())
    if non_finite:
        log.warning("%s: %d of %d outputs are NaN/inf", artifact.name, non_finite, len(outputs))
    scores = softmax(outputs) if artifact.output_kind == "logits" else outputs
    acc = accuracy(scores, mapped_truth)
    acc.pop("predictions")
    return {
        "path": str(artifact.path), "name": artifact.name, "format": artifact.format,
        "runtime": backends.RUNTIME_BY_FORMAT[artifact.format], "runtime_version": version,
        "runtime_settings": settings,
        "quantization": artifact.quantization, "input_dtype": str(inputs.dtype),
        "backbone": (artifact.sidecar.get("source_model") or {}).get("backbone"),
        "output_kind": artifact.output_kind, "labels": labels,
        "size": file_sizes(artifact.files), "files": [p.name for p in artifact.files],
        "load_ms": load_ms, "memory": {"rss_before_mb": memory.before_mb, "peak_rss_mb": memory.peak_mb,
                                       "scope": memory.scope},
        "placement": placement, "fixed_batch": fixed,
        "latency_ms": {str(k): v for k, v in latency.items()},
        "accuracy": {**acc, "n_images": int(len(truth)), "non_finite_outputs": non_finite},
        "vs_reference": None,
        "sidecar_parity": artifact.sidecar.get("parity"),
        "precision": precision, "profile": profiled,
    }, outputs


def _native_precision_variants(artifacts: list[Artifact], config: BenchConfig) -> list[Artifact]:
    """On a CPU where OpenVINO runs FP32 models in bf16 unless told otherwise, each FP32 IR is benched
    twice: at f32 (what parity and edgetl.runtime use) and at the plugin's own precision (what
    benchmark_app and a plain OpenVINO app get), each with its own accuracy row."""
    if not config.openvino_native_precision or config.target != "cpu":
        return []
    from ..profile import native_precision

    native = native_precision() if any(a.format == "openvino" for a in artifacts) else None
    if native in (None, "f32"):
        return []
    return [Artifact(a.path, a.sidecar, f"{a.name} [{native}]", {"precision": None})
            for a in artifacts if a.format == "openvino" and a.quantization == "none"]


def _benchmark_app_beside(artifacts: list[Artifact], results: list[dict], config: BenchConfig) -> None:
    """OpenVINO's own benchmark_app (latency hint, batch 1) on each IR, at the same precision as the row."""
    if config.target != "cpu" or not config.benchmark_app_seconds:
        return
    from ..profile import benchmark_app, benchmark_app_path

    if benchmark_app_path() is None:
        return
    for artifact, entry in zip(artifacts, results):
        if artifact.format != "openvino":
            continue
        shape = artifact.sidecar["input"].get("shape") or []
        dynamic = not shape or shape[0] is None
        entry["benchmark_app"] = benchmark_app(artifact.path, [1, *shape[1:]] if dynamic else None,
                                               "f32" if entry.get("precision") == "f32" else None,
                                               config.threads, config.benchmark_app_seconds)


def compare_with_reference(artifact: Artifact, outputs: np.ndarray, reference: dict) -> dict[str, Any]:
    """Artifact outputs vs the Keras reference in the artifact's own output space, label order matched."""
    space = artifact.output_kind if artifact.output_kind in reference["outputs"] else "probabilities"
    if space != artifact.output_kind:  # logits artifact, reference without a logits layer
        outputs = softmax(outputs)
    ref_order = label_indices(artifact.sidecar["labels"], reference["labels"], reference["path"])
    return {**compare(reference["outputs"][space][:, ref_order], outputs), "space": space}


def _pad(inputs: np.ndarray, multiple: int) -> np.ndarray:
    extra = -len(inputs) % multiple
    return np.concatenate([inputs, inputs[:1].repeat(extra, 0)]) if extra else inputs


def _overhead(artifact: Artifact, config: BenchConfig, cache: InputCache, batch_size: int) -> dict[str, Any]:
    backend = backends.open_backend(artifact.path, config.target, config.threads,
                                    **config.backend_options(artifact.format))
    batch = batch_of(cache.inputs_for(artifact), batch_size if backend.dynamic_batch else backend.input_shape[0])
    for _ in range(max(config.warmup, 1)):
        backend.run(batch)
    # 2 loops x 5 rounds x --runs calls: bounded by --runs like the timed runs (--no-overhead-check: none).
    result = harness_overhead(lambda: backend.run(batch), config.runs)
    return {"artifact": artifact.name, "batch_size": len(batch), **result}


def check_placement(artifact: Artifact, placement: dict[str, Any], config: BenchConfig) -> None:
    """CPU fallback on gpu/npu is never silent: a warning (and a report column), an error with --strict."""
    problem = None
    if placement["cpu_fallback_nodes"]:
        total = sum(placement["nodes"].values())
        problem = f"{placement['cpu_fallback_nodes']} of {total} nodes run on the CPU"
    elif not placement["verified"]:
        problem = f"placement cannot be verified ({placement['method']})"
    if problem and config.strict:
        raise StrictPlacementError(f"--strict: {artifact.name} on --target {config.target}: {problem}")
    if problem:
        log.warning("%s on --target %s: %s", artifact.name, config.target, problem)


def _assemble(config: BenchConfig, artifacts, results, reference, images, cache, devices, overhead,
              batch_sizes) -> dict[str, Any]:
    ref_top1 = None
    ref_entry = None
    truth = np.asarray(images.labels, np.int64)
    if reference:
        mapped = label_indices(images.classes, reference["labels"], reference["path"])[truth]
        ref_acc = accuracy(reference["outputs"]["probabilities"], mapped)
        ref_acc.pop("predictions")
        ref_top1 = ref_acc["top1"]
        ref_entry = {"path": reference["path"], "device": reference["device"], "backbone": reference["backbone"],
                     "accuracy": {**ref_acc, "n_images": int(len(truth))},
                     "latency_ms": {str(k): v for k, v in reference["latency_ms"].items()},
                     "versions": reference["versions"]}
    rows = build_rows(results, ref_entry, batch_sizes)
    versions = software_versions(["onnxruntime", "openvino", "ai-edge-litert", "onnx", "tf2onnx",
                                  "tensorflow", "keras", "psutil", "matplotlib"])
    return {
        "schema": BENCH_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target": config.target,
        "target_devices": {backends.RUNTIME_BY_FORMAT[f]: d for f, d in devices.items()},
        "available_devices": backends.available_devices(),
        "strict": config.strict,
        "settings": {"runs": config.runs, "warmup": config.warmup, "batch_sizes": batch_sizes,
                     "runtime": config.runtime, "threads": thread_settings(config.threads)},
        "machine": machine_info(),
        "versions": versions,
        "data": {"root": str(Path(config.data).resolve()), "classes": images.classes,
                 "n_images": len(images), "per_class": images.counts(),
                 "skipped": [str(p) for p, _ in images.skipped]},
        "preprocessing": list(cache.timings.values()),
        "reference": ref_entry,
        "harness_overhead": overhead,
        "artifacts": results,
        "rows": rows,
        "recommendation": recommend(rows, ref_top1),
    }


ROW_COLUMNS = ["artifact", "kind", "backbone", "format", "runtime", "quantization", "batch_size", "size_bytes",
               "gzip_bytes", "load_ms", "latency_min_ms", "latency_p50_ms", "latency_p90_ms", "latency_p99_ms",
               "latency_mean_ms", "latency_std_ms", "throughput_ips", "peak_rss_mb", "top1", "top5",
               "agreement", "cosine_mean", "max_abs_diff", "speedup_vs_fp32", "size_ratio_vs_fp32",
               "cpu_fallback_nodes", "device", "latency_evidence", "accuracy_evidence", "precision",
               "benchmark_app_median_ms"]


def build_rows(results: list[dict], reference: dict | None, batch_sizes: list[int]) -> list[dict[str, Any]]:
    """One flat row per artifact x batch size (+ the reference), every value a scalar (CSV-ready)."""
    rows = []
    for entry in results:
        for size in batch_sizes:
            timing = entry["latency_ms"][str(size)]
            if "skipped" in timing:
                continue
            vs = entry["vs_reference"] or {}
            rows.append({
                "artifact": entry["name"], "kind": "artifact", "backbone": entry["backbone"], "format": entry["format"],
                "runtime": entry["runtime"], "quantization": entry["quantization"], "batch_size": size,
                "size_bytes": entry["size"]["bytes"], "gzip_bytes": entry["size"]["gzip_bytes"],
                "load_ms": entry["load_ms"],
                **{f"latency_{k}_ms": timing[k] for k in TIMING_KEYS},
                "throughput_ips": size * 1e3 / timing["mean"],
                "peak_rss_mb": entry["memory"]["peak_rss_mb"],
                "top1": entry["accuracy"]["top1"], "top5": entry["accuracy"]["top5"],
                "agreement": vs.get("top1_agreement"), "cosine_mean": vs.get("cosine_mean"),
                "max_abs_diff": vs.get("max_abs_diff"),
                "speedup_vs_fp32": None, "size_ratio_vs_fp32": None,
                "cpu_fallback_nodes": entry["placement"]["cpu_fallback_nodes"],
                "device": ",".join(entry["placement"]["devices"]),
                # every figure says how it was obtained (targets/bench.py adds simulated/estimated rows)
                "latency_evidence": "measured", "accuracy_evidence": "measured",
                "precision": entry.get("precision"),
                "benchmark_app_median_ms": (entry.get("benchmark_app") or {}).get("median_ms") if size == 1 else None,
            })
    # Ratios against the FP32 (quantization none) artifact of the same model, format and batch size.
    for row in rows:
        base = next((r for r in rows if r["format"] == row["format"] and r["quantization"] == "none"
                     and r["batch_size"] == row["batch_size"] and r["backbone"] == row["backbone"]), None)
        if base:
            row["speedup_vs_fp32"] = base["latency_p50_ms"] / row["latency_p50_ms"]
            row["size_ratio_vs_fp32"] = row["size_bytes"] / base["size_bytes"]
    if reference:
        for size in batch_sizes:
            timing = reference["latency_ms"][str(size)]
            rows.append({key: None for key in ROW_COLUMNS} | {
                "artifact": "reference (keras)", "kind": "reference", "backbone": reference.get("backbone"),
                "format": "keras", "runtime": "tensorflow",
                "quantization": "none", "batch_size": size,
                **{f"latency_{k}_ms": timing[k] for k in TIMING_KEYS},
                "throughput_ips": size * 1e3 / timing["mean"],
                "top1": reference["accuracy"]["top1"], "top5": reference["accuracy"]["top5"],
                "agreement": 1.0, "device": reference["device"],
                "latency_evidence": "measured", "accuracy_evidence": "measured"})
    return [{key: row.get(key) for key in ROW_COLUMNS} for row in rows]


def recommend(rows: list[dict], reference_top1: float | None) -> dict[str, Any]:
    """Fastest artifact (p50 at the smallest batch benched) within 1 point of the reference top-1."""
    candidates = [r for r in rows if r["kind"] == "artifact"]
    if not candidates:
        return {"artifact": None, "text": "no artifact was timed"}
    smallest = min(r["batch_size"] for r in candidates)
    candidates = [r for r in candidates if r["batch_size"] == smallest]
    baseline = reference_top1 if reference_top1 is not None else max(r["top1"] for r in candidates)
    basis = "reference" if reference_top1 is not None else "best artifact (no reference)"
    eligible = [r for r in candidates if r["top1"] >= baseline - 0.01 - 1e-9]
    if not eligible:
        return {"artifact": None, "basis": basis, "batch_size": smallest,
                "text": f"no artifact within 1 point of {basis} accuracy ({baseline:.1%})"}
    best = min(eligible, key=lambda r: r["latency_p50_ms"])
    return {"artifact": best["artifact"], "basis": basis, "batch_size": smallest,
            "baseline_top1": baseline, "latency_p50_ms": best["latency_p50_ms"], "top1": best["top1"],
            "text": f"fastest artifact within 1 point of {basis} accuracy: {best['artifact']} "
                    f"({best['latency_p50_ms']:.2f} ms p50 at batch {smallest}, top-1 {best['top1']:.1%} "
                    f"vs {baseline:.1%})"}


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    Path(path).write_text(buffer.getvalue())
