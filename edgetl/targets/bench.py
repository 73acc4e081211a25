"""``edgetl bench --target npu:...|gpu:...``: a registered target, on its device or, with ``--simulate``,
without it.

* On hardware: real latency (``measured``), through the same ``open_backend`` as everything else.
* ``--simulate``, ``npu:qnn-htp``: the EPContext model runs on Qualcomm's HTP simulator: accuracy and
  agreement with the FP32 Keras reference are ``simulated``; the simulator's wall time is kept apart as
  ``simulator_wall_ms_per_image`` and never reported as device latency.
* ``--simulate``, ``npu:ethos-u*``: the compiled model needs the Ethos-U driver, so accuracy and agreement
  come from its uncompiled int8 model on LiteRT's reference kernels (``simulated``: Vela's NPU ops are
  specified bit-exact to them), latency, cycles, SRAM and flash from Vela's summary (``estimated``, at
  the system config it was compiled for).
* Without ``--simulate`` and without the device: ``DeviceUnavailable`` (exit 3) naming what is missing.

bench.json keeps schema ``edgetl.bench/1`` (every figure labelled: ``evidence`` per artifact and
``latency_evidence`` / ``accuracy_evidence`` per row), plus report.md and report.html.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..benchmark.config import BENCH_SCHEMA, BenchConfig, BenchResult, expand_artifacts, verify_hashes
from ..benchmark.inputs import InputCache, batch_of, data_summary, label_indices, run_all, scan_images, timed_latency
from ..benchmark.machine import PeakRss, machine_info, thread_settings
from ..benchmark.reference import (accuracy_entry, check_reference, compare_with_reference, default_reference,
                                   reference_entry, reference_outputs)
from ..benchmark.rows import artifact_entry, artifact_row, reference_rows, timing_columns, write_csv
from ..benchmark.run import bench_inputs
from ..errors import CheckFailed, DeviceUnavailable, UsageError
from ..metadata import atomic_directory, check_output_dir, software_versions, write_json

EVIDENCE = ("measured", "simulated", "estimated")
LEGEND = {"measured": "timed or computed on this machine's real device",
          "simulated": "computed by a vendor simulator or reference kernels standing in for the device",
          "estimated": "predicted by the vendor compiler's performance model (no execution)"}


@dataclass
class TargetBenchConfig:
    artifacts: Sequence[Path]
    data: Path
    out: Path
    target: str
    reference: Path | None = None
    simulate: bool = False
    allow_cpu_fallback: bool = False
    runs: int = 50
    warmup: int = 5
    threads: int | None = None
    overwrite: bool = False


@dataclass
class _Plan:
    target: Any
    level: str
    artifacts: list
    reference: Path | None


def _plan(config: TargetBenchConfig) -> _Plan:
    from .. import targets

    if config.target == "cpu":
        raise UsageError("--simulate is for npu/gpu targets; the cpu target is always measured")
    levels = ("hardware", "simulator", "estimator") if config.simulate else ("hardware",)
    target = targets.resolve(config.target, levels)
    level = target.availability().level
    artifacts = expand_artifacts(config.artifacts, compiled_too=True)
    if target.kind == "npu":
        artifacts = [a for a in artifacts if (a.sidecar.get("target") or {}).get("name") == target.name
                     and (a.sidecar["target"].get("compiled") is None)]
        if not artifacts:
            raise UsageError(f"no artifact compiled for {target.name} among {', '.join(map(str, config.artifacts))}; "
                             f"run `edgetl export MODEL --target {target.name} --calib DIR` first")
    reference = Path(config.reference) if config.reference else default_reference(artifacts)
    if reference:
        check_reference(reference)
    check_output_dir(config.out, bench_inputs(config, artifacts, reference), config.overwrite)
    if not Path(config.data).is_dir():
        raise UsageError(f"data folder {config.data} does not exist")
    if target.vela_config and level == "hardware":
        raise DeviceUnavailable(f"{target.name}: an Ethos-U device is present but edgetl cannot drive it yet; "
                                "pass --simulate for the reference-kernel accuracy and Vela's estimate")
    return _Plan(target, level, artifacts, reference)


def preflight_target(config: TargetBenchConfig) -> bool:
    """Cheap checks before TensorFlow loads (exit 3 for a missing device/tool); True if a reference runs."""
    return _plan(config).reference is not None


def bench_target(config: TargetBenchConfig) -> BenchResult:
    plan = _plan(config)
    if plan.target.kind == "gpu":
        return _bench_gpu(config, plan)
    images = scan_images(config.data)
    cache = InputCache(images.paths)
    truth = np.asarray(images.labels, np.int64)
    with atomic_directory(config.out, config.overwrite) as tmp:
        verify_hashes(plan.artifacts)
        entries, raw = [], []
        for artifact in plan.artifacts:
            run = _qnn_artifact if plan.target.name == "npu:qnn-htp" else _ethos_u_artifact
            entry, outputs = run(artifact, config, plan, cache)
            mapped = label_indices(images.classes, artifact.sidecar["labels"], artifact.path)[truth]
            entry["accuracy"] = accuracy_entry(artifact, outputs, mapped)
            entries.append(entry)
            raw.append(outputs)
        reference = None
        if plan.reference:
            reference = reference_outputs(plan.reference, cache, min(config.runs, 10), 2, [1], plan.artifacts)
            for artifact, entry, outputs in zip(plan.artifacts, entries, raw):
                entry["vs_reference"] = compare_with_reference(artifact, outputs, reference)
        report = _assemble(config, plan, images, cache, entries, reference)
        markdown = render_markdown(report)
        write_json(tmp / "bench.json", report)
        write_csv(tmp / "bench.csv", report["rows"])
        (tmp / "report.md").write_text(markdown)
        (tmp / "report.html").write_text(render_html(report))
    return BenchResult(json=report, rows=report["rows"], markdown=markdown, out=Path(config.out))


def _bench_gpu(config: TargetBenchConfig, plan: _Plan) -> BenchResult:
    """A GPU target with its device here: the ordinary bench on that runtime's GPU device."""
    from ..benchmark import bench

    runtime = {"onnx": "onnxruntime", "tflite": "tflite", "openvino": "openvino"}.get(plan.target.artifact.format)
    if runtime is None:
        raise UsageError(f"{plan.target.name}: the Keras reference runs on the GPU in every bench (--reference)")
    return bench(BenchConfig(artifacts=config.artifacts, data=config.data, out=config.out, target="gpu",
                             reference=config.reference, runs=config.runs, warmup=config.warmup,
                             threads=config.threads, runtime=runtime, strict=not config.allow_cpu_fallback,
                             overwrite=config.overwrite))


def _base_entry(artifact, runtime: str, version: str, input_dtype: str) -> dict[str, Any]:
    return {**artifact_entry(artifact, runtime, version, {}, input_dtype), "fixed_batch": 1, "vs_reference": None,
            "sidecar_parity": artifact.sidecar.get("parity"), "target": artifact.sidecar.get("target")}


# -- Qualcomm HTP ------------------------------------------------------------------------------------
def _qnn_artifact(artifact, config: TargetBenchConfig, plan: _Plan, cache) -> tuple[dict, np.ndarray]:
    from ..exporting import qnn
    from ..runtime import backends

    block = artifact.sidecar["target"]
    soc = block.get("soc")
    left = qnn.context_cpu_nodes(artifact.path)
    if left and not config.allow_cpu_fallback:
        raise CheckFailed(f"{artifact.name}: {len(left)} node(s) stay on the CPU, not the HTP: "
                          f"{qnn.describe_nodes(left)} (pass --allow-cpu-fallback to accept that)")
    inputs = cache.inputs_for(artifact)
    with PeakRss() as memory:
        started = time.perf_counter()
        backend = backends.open_backend(artifact.path, "npu", config.threads, soc=soc, simulate=config.simulate,
                                        allow_cpu_fallback=config.allow_cpu_fallback)
        load_ms = (time.perf_counter() - started) * 1e3
        started = time.perf_counter()
        outputs = run_all(backend, inputs, 1)
        wall_ms = (time.perf_counter() - started) * 1e3 / len(inputs)
        latency: dict[str, Any] = {"1": {"skipped": "HTP simulator: its wall time is not device latency"}}
        evidence = "simulated" if backend.simulated else "measured"
        if not backend.simulated:
            latency = {"1": timed_latency(backend, batch_of(inputs, 1), config.runs, config.warmup)}
        devices = list(backend.placement.devices)
        version = _qnn_version()
    nodes = block.get("nodes") or {}
    entry = _base_entry(artifact, "onnxruntime", version, "float32")
    entry.update(
        load_ms=load_ms, memory=memory.summary(),
        placement={"requested": "npu", "devices": devices,
                   "nodes": {"QNN": int(nodes.get("compute_ops_on_npu", nodes.get("on_npu", 0))), "CPU": len(left)},
                   "method": "EPContext model: nodes outside the EPContext node stay on the CPU EP "
                             f"(counted: layers; with Q/DQ nodes {nodes.get('on_npu')} of {nodes.get('total')} on the HTP)",
                   "cpu_fallback_nodes": len(left), "verified": True},
        latency_ms=latency,
        evidence={"accuracy": evidence, "vs_reference": evidence, "load_ms": evidence,
                  "latency_ms": "measured" if evidence == "measured" else "not measured", "size": "measured"},
        npu={"target": plan.target.name, "level": plan.level, "soc": soc, "soc_name": block.get("soc_name"),
             "cpu_nodes": left, "compile_seconds": block.get("compile_seconds"),
             "simulator_wall_ms_per_image": {"value": round(wall_ms, 1), "evidence": "simulated",
                                             "note": "x86 HTP simulator wall time, not device latency"}
             if evidence == "simulated" else None})
    return entry, outputs


def _qnn_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("onnxruntime-qnn")


# -- Arm Ethos-U -------------------------------------------------------------------------------------
def _ethos_u_artifact(artifact, config: TargetBenchConfig, plan: _Plan, cache) -> tuple[dict, np.ndarray]:
    from ..exporting import vela
    from ..metadata import sha256_file

    block = artifact.sidecar["target"]
    placement = block.get("placement") or {}
    if placement.get("cpu_ops") and not config.allow_cpu_fallback:
        raise CheckFailed(f"{artifact.name}: {placement['cpu_ops']} op(s) stay on the CPU, not the NPU: "
                          f"{vela.describe_unsupported(placement)} (pass --allow-cpu-fallback to accept that)")
    uncompiled = artifact.path.with_name(block["uncompiled"])
    if not uncompiled.exists() or sha256_file(uncompiled) != block.get("uncompiled_sha256"):
        raise CheckFailed(f"{artifact.name}: its uncompiled model {uncompiled.name} is missing or changed")
    inputs = cache.inputs_for(artifact)
    with PeakRss() as memory:
        started = time.perf_counter()
        reference_int8, optimized_int8 = vela.reference_kernel_outputs(uncompiled, inputs)
        load_ms = (time.perf_counter() - started) * 1e3 / len(inputs)  # reference kernels, per image
    scale, zero = vela.output_quantization(uncompiled)
    outputs = vela.dequantize(reference_int8, scale, zero)
    estimate = dict(block.get("estimate") or {})
    summary = artifact.path.with_name(artifact.path.name.replace(".tflite", "_summary.csv"))
    if summary.exists():  # the CSV beside the model is the source; the sidecar holds a copy
        estimate.update(vela.read_summary(summary), evidence="estimated", source=f"Vela summary {summary.name}")
    entry = _base_entry(artifact, "litert", _litert_version(), "int8")
    entry.update(
        load_ms=load_ms, memory=memory.summary(),
        placement={"requested": "npu", "devices": [f"{block['accelerator_config']} (Vela placement)"],
                   "nodes": {"NPU": int(placement.get("npu_ops", 0)), "CPU": int(placement.get("cpu_ops", 0))},
                   "method": "Vela --show-cpu-operations at compile time", "verified": True,
                   "cpu_fallback_nodes": int(placement.get("cpu_ops", 0))},
        latency_ms={"1": {"skipped": "no Ethos-U here: Vela's estimate is in npu.estimate (estimated)"}},
        evidence={"accuracy": "simulated", "vs_reference": "simulated",
                  "load_ms": "simulated",
                  "latency_ms": "estimated", "cycles": "estimated", "memory_kib": "estimated", "size": "measured"},
        npu={"target": plan.target.name, "level": plan.level, "accelerator_config": block["accelerator_config"],
             "system_config": estimate.get("system_config"), "memory_mode": estimate.get("memory_mode"),
             "estimate": estimate, "compile_seconds": block.get("compile_seconds"),
             "accuracy_source": f"LiteRT BUILTIN_REF kernels on {uncompiled.name}",
             "reference_vs_optimized_kernels": {
                 "identical_outputs": float(np.mean((reference_int8 == optimized_int8).all(axis=1))),
                 "max_lsb_diff": int(np.abs(reference_int8.astype(np.int32) - optimized_int8).max())}})
    return entry, outputs


def _litert_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("ai-edge-litert")


# -- the document ------------------------------------------------------------------------------------
def _rows(entries: list[dict], ref_entry: dict | None) -> list[dict[str, Any]]:
    rows = []
    for entry in entries:
        timing = entry["latency_ms"]["1"]
        estimate = (entry.get("npu") or {}).get("estimate") or {}
        row = artifact_row(entry, 1) | {"accuracy_evidence": entry["evidence"]["accuracy"],
                                        "latency_evidence": entry["evidence"]["latency_ms"]}
        if "p50" in timing:
            row.update(timing_columns(timing, 1), load_ms=entry["load_ms"])
        elif "inference_ms" in estimate:
            row.update(latency_p50_ms=estimate["inference_ms"], throughput_ips=1e3 / estimate["inference_ms"])
        rows.append(row)
    return rows + (reference_rows(ref_entry, [1]) if ref_entry else [])


def _assemble(config, plan, images, cache, entries, reference) -> dict[str, Any]:
    from ..runtime import backends

    truth = np.asarray(images.labels, np.int64)
    ref_entry = {**reference_entry(reference, images.classes, truth), "evidence": "measured"} if reference else None
    rows = _rows(entries, ref_entry)
    found = plan.target.availability()
    return {
        "schema": BENCH_SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "target": plan.target.name,
        "mode": "hardware" if plan.level == "hardware" else f"simulate ({plan.level})",
        "target_info": {"name": plan.target.name, "level": plan.level, "detail": found.detail,
                        "description": plan.target.description},
        "evidence_legend": LEGEND,
        "strict": not config.allow_cpu_fallback,
        "target_devices": {},
        "available_devices": backends.available_devices(),
        "settings": {"runs": config.runs, "warmup": config.warmup, "batch_sizes": [1], "runtime": "auto",
                     "threads": thread_settings(config.threads)},
        "machine": machine_info(),
        "versions": software_versions(["onnxruntime", "onnxruntime-qnn", "ai-edge-litert", "ethos-u-vela",
                                       "tensorflow", "keras"]),
        "data": data_summary(config.data, images),
        "preprocessing": list(cache.timings.values()),
        "reference": ref_entry,
        "harness_overhead": None,
        "artifacts": entries,
        "rows": rows,
        "recommendation": {"artifact": None, "text": _verdict(plan, entries)},
    }


def _verdict(plan, entries) -> str:
    if plan.level == "hardware":
        return f"{plan.target.name}: latency measured on the device"
    parts = []
    for entry in entries:
        vs = entry.get("vs_reference") or {}
        agreement = f"agreement {vs['top1_agreement']:.3f} ({entry['evidence']['accuracy']})" if vs else \
            f"top-1 {entry['accuracy']['top1']:.3f} ({entry['evidence']['accuracy']})"
        estimate = (entry.get("npu") or {}).get("estimate")
        if estimate:
            agreement += (f", {estimate['inference_ms']:.2f} ms, {estimate['sram_kib']:.0f} KiB SRAM at "
                          f"{estimate.get('system_config')} (estimated)")
        parts.append(f"{entry['name']}: {agreement}")
    return f"no {plan.target.name} device here; no device latency measured. " + "; ".join(parts)


# -- reports -----------------------------------------------------------------------------------------
COLUMNS = [("artifact", "artifact"), ("size", "size"), ("ops_on_npu", "ops on NPU"), ("top1", "top-1"),
           ("agreement", "agree vs FP32"), ("cosine", "cosine"), ("latency", "latency / inference"),
           ("sram", "SRAM"), ("flash", "flash/DRAM"), ("cycles", "cycles")]


def _cells(entry: dict) -> dict[str, str]:
    from ..report import human_bytes

    ev = entry["evidence"]
    vs = entry.get("vs_reference") or {}
    npu = entry.get("npu") or {}
    estimate = npu.get("estimate") or {}
    nodes = entry["placement"]["nodes"]
    on_npu = nodes.get("QNN", nodes.get("NPU", 0))
    timing = entry["latency_ms"].get("1", {})
    if "p50" in timing:
        latency = f"{timing['p50']:.2f} ms p50 (measured)"
    elif estimate:
        latency = f"{estimate['inference_ms']:.2f} ms (estimated, {estimate.get('core_clock_mhz', 0):.0f} MHz)"
    else:
        wall = (npu.get("simulator_wall_ms_per_image") or {}).get("value")
        latency = "not measured" + (f" (simulator wall {wall:.0f} ms/img is not device latency)" if wall else "")
    return {
        "artifact": entry["name"], "size": f"{human_bytes(entry['size']['bytes'])} (measured)",
        "ops_on_npu": f"{on_npu} of {sum(nodes.values())}",
        "top1": f"{entry['accuracy']['top1']:.1%} ({ev['accuracy']})",
        "agreement": f"{vs['top1_agreement']:.3f} ({ev['vs_reference']})" if vs else "–",
        "cosine": f"{vs['cosine_mean']:.5f} ({ev['vs_reference']})" if vs.get("cosine_mean") is not None else "–",
        "latency": latency,
        "sram": f"{estimate['sram_kib']:.0f} KiB (estimated)" if estimate else "–",
        "flash": (f"{estimate['flash_kib']:.0f} / {estimate['dram_kib']:.0f} KiB (estimated)") if estimate else "–",
        "cycles": f"{int(estimate['cycles_total']):,} (estimated)" if estimate.get("cycles_total") else "–",
    }


def render_markdown(report: dict[str, Any]) -> str:
    info = report["target_info"]
    lines = [f"# edgetl bench: target {report['target']} ({report['mode']})", "",
             f"- target: {info['description']}; this machine: {info['level']} ({info['detail']})",
             f"- data: {report['data']['n_images']} images, {len(report['data']['classes'])} classes "
             f"({report['data']['root']})"]
    reference = report.get("reference")
    if reference:
        lines.append(f"- reference: Keras FP32 on {reference['device']}: top-1 {reference['accuracy']['top1']:.1%} "
                     "(measured)")
    lines.append("- evidence: " + "; ".join(f"**{k}** = {v}" for k, v in report["evidence_legend"].items()))
    lines += ["", "| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for entry in report["artifacts"]:
        cells = _cells(entry)
        lines.append("| " + " | ".join(cells[key].replace("|", "\\|") for key, _ in COLUMNS) + " |")
    lines.append("")
    for entry in report["artifacts"]:
        npu = entry.get("npu") or {}
        cpu = npu.get("cpu_nodes") or (entry.get("target") or {}).get("placement", {}).get("cpu") or []
        lines.append(f"- {entry['name']}: placement {entry['placement']['method']}; CPU fallback "
                     f"{entry['placement']['cpu_fallback_nodes']}" + (f" ({cpu[:3]})" if cpu else ""))
        if "reference_vs_optimized_kernels" in npu:
            exact = npu["reference_vs_optimized_kernels"]
            lines.append(f"  - LiteRT reference vs optimized int8 kernels: {exact['identical_outputs']:.1%} of "
                         f"outputs identical, max {exact['max_lsb_diff']} LSB apart (measured)")
    lines += ["", f"**{report['recommendation']['text']}**", ""]
    return "\n".join(lines)


def render_html(report: dict[str, Any]) -> str:
    from ..report import html_page

    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cells(e)[key])}</td>" for key, _ in COLUMNS) + "</tr>"
                   for e in report["artifacts"])
    legend = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in report["evidence_legend"].items())
    parts = [f"<p class=\"rec\">{html.escape(report['recommendation']['text'])}</p>", f"<ul>{legend}</ul>",
             f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>",
             "<h2>Details</h2><pre>" + html.escape(render_markdown(report)) + "</pre>"]
    return html_page(f"edgetl bench: target {report['target']} ({report['mode']})", "".join(parts))
