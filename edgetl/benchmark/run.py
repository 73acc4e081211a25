"""`edgetl bench`: latency, memory, size and accuracy of exported artifacts against their Keras reference.

Every artifact runs through ``runtime.backends.open_backend`` (the same code path as export's parity
check and the device runtime) and is fed exactly what its sidecar recipe says: normalised float32, or
uint8 pixels for uint8-input artifacts (normalisation folded into the graph).

Order of work, so that a run that cannot succeed fails before it spends any time:
1. expand ARTIFACT arguments (a directory = every artifact with a sidecar in it), read sidecars;
2. check that the target has a device for every runtime involved (``DeviceUnavailable``, exit 3);
3. refuse an existing non-empty ``--out`` unless ``overwrite``; verify file hashes vs sidecars;
4. each artifact: load (cold start), node placement, accuracy pass, peak RSS; then the Keras FP32
   reference (outputs compared in each artifact's output space); then every artifact x batch size and
   the reference at each batch size are timed together in alternating rounds (``timing.settled_rounds``,
   after each one's warm-up), so a swing in machine load hits all of them alike; harness overhead once;
5. speed-ups (vs the FP32 artifact of the same format, vs the Keras reference, vs ``--anchor``) as
   paired per-round ratios with bootstrap 95% intervals, accuracy with Wilson intervals, McNemar and
   per-class figures (``significance``); bench.json (schema ``edgetl.bench/2``), bench.csv, report.md,
   report.html written atomically.

One artifact that cannot be benched does not stop the others (as ONNX Runtime's perf tools and AI Hub
report per-model failures): an unusable sidecar (read in 1.), a hash mismatch, a runtime that refuses
the file or fails while running it (one line from its runtime backend) is a ``failed`` entry with its
one-line reason in bench.json and report.md, the others are benched and written, and the run ends
with ``CheckFailed`` (exit 1) listing the failures. A wrong argument, data folder or target still
stops everything before any work (exit 2 / 3).

What the numbers mean:
* latency: wall time of ``backend.run(batch)`` only (input already prepared, output copied back to
  numpy); preprocessing (decode+resize+crop, normalise) is timed separately per recipe;
* load_ms: ``open_backend`` (session creation / compile); the runtime's Python module is imported
  beforehand, but a plugin's first-use initialisation (OpenVINO CPU plugin) lands in the first load;
* --runs N: N timed calls of each artifact x batch size (and of the reference), in rounds where each
  takes its turn with one untimed call (its threads wake) and 2 timed ones (``timing.settled_rounds``);
  p50/p90 over the N calls, and round i of one pairs with round i of another (``round_ms``);
* peak_rss_mb: this process's high-water mark during the artifact's load + accuracy pass (VmHWM reset per
  artifact on Linux), so it includes the harness and any TensorFlow already imported: compare
  ``peak_rss_mb - rss_before_mb`` across artifacts, not absolute numbers with a device;
* a target with no device for some runtime of the artifacts given fails the whole run (exit 3): a
  silently shorter report would read as "benchmarked".
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckFailed, UsageError
from ..metadata import atomic_directory, check_output_dir, software_versions, write_json
from ..runtime import backends
from ..timing import harness_overhead, round_medians, settled_rounds, timing_stats
from .config import BENCH_SCHEMA, Artifact, BenchConfig, BenchResult, expand_artifacts, verify_hashes
from .inputs import (InputCache, batch_of, cap_batch_sizes, data_summary, label_indices, pad_to_multiple, run_all,
                     scan_images)
from .machine import PeakRss, machine_info, thread_settings
from .placement import StrictPlacementError, check_placement, check_target
from .reference import (accuracy_entry, check_reference, compare_with_reference, default_reference,
                        reference_entry, reference_outputs, source_model_dir)
from .rows import artifact_entry, build_rows, recommend, write_csv
from .significance import accuracy_uncertainty, latency_comparisons, pairwise_speedup

log = logging.getLogger("edgetl")


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
    artifacts = expand_artifacts(config.all_artifacts(), config.runtime, unreadable_as_failed=True)
    usable = [a for a in artifacts if not a.problem and not a.elsewhere]  # others: failed / not benched rows
    if artifacts and all(a.elsewhere for a in artifacts):  # only NPU-compiled models: nothing runs here
        raise UsageError(artifacts[0].elsewhere)
    devices = check_target(config.target, {a.format for a in usable})
    reference = Path(config.reference) if config.reference else default_reference(usable)
    if reference and reference.suffix == ".keras":  # a .keras file stands for its model directory
        reference = reference.parent
    if reference:
        check_reference(reference)
    check_output_dir(config.out, bench_inputs(config, artifacts, reference), config.overwrite)
    if not Path(config.data).is_dir():
        raise UsageError(f"data folder {config.data} does not exist")
    classes = sorted(p.name for p in Path(config.data).iterdir() if p.is_dir() and not p.name.startswith("."))
    for artifact in usable:  # class folders must name the artifact's labels (matched by name)
        label_indices(classes, artifact.sidecar.get("labels", []), artifact.path)
    return Plan(artifacts, devices, reference, needs_tensorflow=reference is not None)


def bench_inputs(config: BenchConfig, artifacts: list[Artifact], reference: Path | None) -> list[Path]:
    """What --out may not be, hold or lie inside: the artifacts (as given and every file of each),
    the data and the reference model."""
    given = [*map(Path, config.artifacts), *([Path(config.anchor)] if getattr(config, "anchor", None) else [])]
    return [*given, *(f for a in artifacts for f in a.files), Path(config.data),
            *([reference] if reference else [])]


def bench(config: BenchConfig) -> BenchResult:
    """Bench every artifact; one that cannot be used (hash mismatch, runtime refuses it) is reported
    as failed in bench.json/report.md while the others are benched, then ``CheckFailed`` (exit 1) is
    raised with the written result attached as ``.result``. When none can be used nothing is written."""
    plan = preflight(config)
    artifacts, devices, reference_dir = plan.artifacts, plan.devices, plan.reference
    elsewhere = [{"path": str(a.path), "name": a.name, "format": a.format, "reason": a.elsewhere}
                 for a in artifacts if a.elsewhere]  # compiled for an NPU: listed, with why, never run here
    for entry in elsewhere:
        log.warning("%s: not benched: %s", entry["name"], entry["reason"])
    artifacts = [a for a in artifacts if not a.elsewhere]
    artifacts = artifacts + _native_precision_variants(artifacts, config)
    images = scan_images(config.data)
    batch_sizes = cap_batch_sizes(config.batch_sizes, len(images))
    with atomic_directory(config.out, config.overwrite, inputs=bench_inputs(config, artifacts, reference_dir),
                          verb="bench") as tmp:
        cache = InputCache(images.paths)
        truth = np.asarray(images.labels, np.int64)
        results, outputs, benched, failed, runners = [], [], [], [], []
        from ..console import progress

        with progress(len(artifacts), "bench") as bar:
            for artifact in artifacts:  # artifacts first: a corrupt one fails before the Keras model loads
                log.info("bench %s on %s", artifact.name, config.target)
                bar.describe(f"bench {artifact.name}")
                try:
                    if artifact.problem:  # its sidecar cannot be used (read up front, reported here)
                        raise CheckFailed(artifact.problem)
                    verify_hashes([artifact])
                    entry, raw, timed = _bench_artifact(artifact, config, batch_sizes, cache, images.classes, truth)
                except StrictPlacementError:
                    raise
                except CheckFailed as exc:
                    reason = " ".join(str(exc).split())
                    log.warning("%s: not benched: %s", artifact.name, reason)
                    failed.append({"path": str(artifact.path), "name": artifact.name, "format": artifact.format,
                                   **({} if artifact.problem else {"quantization": artifact.quantization}),
                                   "reason": reason})
                    continue
                finally:
                    bar.advance()
                results.append(entry)
                outputs.append(raw)
                runners.append(timed)
                benched.append(artifact)
        if not benched:
            raise CheckFailed(failed[0]["reason"] if len(failed) == 1 else
                              f"none of the {len(failed)} artifacts could be benched: "
                              + "; ".join(f"{f['name']}: {f['reason']}" for f in failed))
        artifacts = benched
        _benchmark_app_beside(artifacts, results, config)
        reference = None
        timer = _InterleavedTimer(config, results, runners)
        if reference_dir:
            log.info("reference: %s", reference_dir)
            reference = reference_outputs(reference_dir, cache, config.runs, config.warmup, batch_sizes, artifacts,
                                          timer)
            for artifact, entry, raw in zip(artifacts, results, outputs):
                # Without an explicit --reference, only artifacts exported from that model are compared.
                if config.reference or source_model_dir(artifact) in (None, Path(reference["path"]).resolve()):
                    entry["vs_reference"] = compare_with_reference(artifact, raw, reference)
        else:
            timer({})
        runners = timer = None  # the artifacts' sessions go before the overhead check opens its own
        gc.collect()
        overhead = _overhead(artifacts[0], config, cache, batch_sizes[0]) if config.measure_overhead else None
        report = _assemble(config, artifacts, results, reference, images, cache, devices, overhead, batch_sizes,
                           outputs)
        report["failed"] = failed
        report["not_benched"] = elsewhere
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


class _InterleavedTimer:
    """Times every artifact x batch size, plus the reference's runs it is given (``{batch size: run}``,
    empty without a reference), in the same alternating rounds; fills each entry's ``latency_ms`` and
    returns the reference's."""

    def __init__(self, config: BenchConfig, results: list[dict], runners: list[dict[int, Any]]):
        self.config, self.results, self.runners = config, results, runners

    def __call__(self, reference_runs: dict[int, Any]) -> dict[int, dict[str, Any]]:
        everything = {(i, size): run for i, runs in enumerate(self.runners) for size, run in runs.items()}
        everything.update({("reference", size): run for size, run in reference_runs.items()})
        rounds = settled_rounds(everything, self.config.runs, warmup=self.config.warmup)
        timings = {key: _timing(values) for key, values in rounds.items()}
        for (who, size), timing in timings.items():
            if who != "reference":
                self.results[who]["latency_ms"][str(size)] = timing
        return {size: timings[("reference", size)] for size in reference_runs}


def _timing(rounds: list[list[float]]) -> dict[str, Any]:
    """One artifact x batch size: statistics over every timed call, the calls, and each round's median
    (what the paired ratios compare)."""
    values = [t for r in rounds for t in r]
    return {**timing_stats(values), "times_ms": values, "round_ms": round_medians(rounds)}


def _bench_artifact(artifact: Artifact, config: BenchConfig, batch_sizes: list[int], cache: InputCache,
                    classes: list[str], truth: np.ndarray) -> tuple[dict[str, Any], np.ndarray, dict[int, Any]]:
    """Load, placement and accuracy pass of one artifact; returns its entry, its outputs and one
    ``run`` per batch size for the interleaved timing (each keeps the open session)."""
    inputs = cache.inputs_for(artifact)
    mapped_truth = label_indices(classes, artifact.sidecar["labels"], artifact.path)[truth]
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
        placement = backend.node_placement(batch_of(inputs, fixed or 1))
        check_placement(artifact, placement, config)  # before the timed runs: --strict fails fast
        # Accuracy pass at the largest batch the graph takes (fixed-batch graphs: their own batch).
        chunk = fixed or max(batch_sizes)
        outputs = run_all(backend, pad_to_multiple(inputs, chunk) if fixed else inputs, chunk)[:len(inputs)]
        latency, timed = {}, {}
        for size in batch_sizes:
            if fixed and size != fixed:
                latency[size] = {"skipped": f"graph has a fixed batch of {fixed}"}
                continue
            timed[size] = (lambda run, batch: lambda: run(batch))(backend.run, batch_of(inputs, size))
        version = backend.version()
        settings = dict(backend.settings)
        precision = backend.reported_precision
    profiled = None
    if config.profile:
        from ..profile import profile_artifact

        profiled = profile_artifact(artifact.path, artifact.format, batch_of(inputs, fixed or 1), config.profile_runs,
                                    config.threads, **config.backend_options(artifact.format), **artifact.options)
    acc = accuracy_entry(artifact, outputs, mapped_truth)
    if acc["non_finite_outputs"]:
        log.warning("%s: %d of %d outputs are NaN/inf", artifact.name, acc["non_finite_outputs"], len(outputs))
    entry = artifact_entry(artifact, backends.RUNTIME_BY_FORMAT[artifact.format], version, settings, str(inputs.dtype))
    return {
        **entry, "load_ms": load_ms, "memory": memory.summary(), "placement": placement, "fixed_batch": fixed,
        "latency_ms": {str(k): v for k, v in latency.items()}, "accuracy": acc, "vs_reference": None,
        "sidecar_parity": artifact.sidecar.get("parity"), "precision": precision, "profile": profiled,
    }, outputs, timed


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
            for a in artifacts if a.format == "openvino" and a.quantization == "none" and not a.problem]


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


def _overhead(artifact: Artifact, config: BenchConfig, cache: InputCache, batch_size: int) -> dict[str, Any]:
    backend = backends.open_backend(artifact.path, config.target, config.threads,
                                    **config.backend_options(artifact.format))
    batch = batch_of(cache.inputs_for(artifact), batch_size if backend.dynamic_batch else backend.input_shape[0])
    for _ in range(max(config.warmup, 1)):
        backend.run(batch)
    # 2 loops x 5 rounds x --runs calls: bounded by --runs like the timed runs (--no-overhead-check: none).
    result = harness_overhead(lambda: backend.run(batch), config.runs)
    return {"artifact": artifact.name, "batch_size": len(batch), **result}


def _assemble(config: BenchConfig, artifacts, results, reference, images, cache, devices, overhead,
              batch_sizes, outputs) -> dict[str, Any]:
    truth = np.asarray(images.labels, np.int64)
    ref_entry = reference_entry(reference, images.classes, truth) if reference else None
    accuracy_uncertainty(results, outputs, images.classes, truth, reference, ref_entry)
    anchor = _anchor_name(config, artifacts)
    latency_comparisons(results, ref_entry, anchor)
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
        "data": data_summary(config.data, images),
        "preprocessing": list(cache.timings.values()),
        "reference": ref_entry,
        "harness_overhead": overhead,
        "artifacts": results,
        "rows": rows,
        "anchor": anchor,
        "recommendation": recommend(rows, ref_entry, pairwise_speedup(results)),
    }


def _anchor_name(config: BenchConfig, artifacts: list[Artifact]) -> str | None:
    """The benched artifact --anchor names (every row's latency_vs_anchor is relative to it)."""
    if config.anchor is None:
        return None
    wanted = Path(config.anchor).resolve()
    return next((a.name for a in artifacts if a.path.resolve() == wanted and not a.options), None)
