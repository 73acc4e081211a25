"""``edgetl export --target TARGET``: what one registered target runs, with its sidecars.

* ``npu:qnn-htp`` -> ``model_qnn_int8.onnx`` (static batch 1, QDQ for the HTP; runs on any ONNX Runtime)
  and ``model_qnn_int8_<soc>_ctx.onnx`` (the EPContext model compiled for ``--soc``), see ``exporting.qnn``.
* ``npu:ethos-u*`` -> ``model_tflite_int8_io8.tflite`` (full integer, int8 I/O, uncompiled) and
  ``model_<config>_vela.tflite`` (+ ``model_<config>_vela_summary.csv``, Vela's estimate), see
  ``exporting.vela``.
* ``gpu:*`` -> the ordinary export restricted to the target's format, sidecars marked with the target.

Every sidecar gets a ``target`` block (name, how compiled, placement, estimate) and ``files``
{name: sha256} over every file of the artifact. Parity is checked where the compiled artifact can run:
the EPContext model on the QNN HTP backend (on x86: Qualcomm's simulator, ``evidence: simulated``); for
Ethos-U the uncompiled int8 model with LiteRT's reference kernels, which Vela's NPU ops are meant to
match bit for bit (the reference-vs-optimized kernel difference is recorded too).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..choices import InputDtype, Mode
from ..console import say
from ..errors import UsageError
from ..metadata import atomic_directory, sha256_file, write_json
from .formats import CALIBRATION_FILE, FORMATS, SUMMARY_FILE
from .job import ExportJob
from .results import ArtifactResult, ExportResult
from .scratch import scratch_folder
from .sidecar import artifact_sidecar, quantization_block, write_artifact_sidecar

QNN_VERSIONS = ["tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "onnxruntime-qnn"]
VELA_VERSIONS = ["tensorflow", "keras", "ai-edge-litert", "ethos-u-vela"]


def export_target(config):
    """Dispatch on the target's kind; returns an ``ExportResult`` like ``export``."""
    from .. import targets

    target = (targets.resolve(config.target, ("hardware", "simulator", "estimator"))
              if config.target in targets.KINDS else targets.get(config.target))
    if target.kind == "gpu":
        return _export_gpu(config, target)
    if target.name == "npu:qnn-htp":
        from ..runtime.backends import qnn_ep_devices

        qnn_ep_devices()  # DeviceUnavailable (exit 3) naming .[qnn] before any work
        builder = _build_qnn
    elif target.vela_config:
        from .vela import vela_version

        vela_version()  # DeviceUnavailable naming .[ethos-u]
        builder = _build_ethos_u
    else:
        raise UsageError(f"export --target {target.name}: use the ordinary export (--format "
                         f"{target.artifact.format}); its NPU plugin compiles at load")
    if config.calib is None:
        raise UsageError(f"--target {target.name} needs a full-integer model: pass --calib DIR "
                         "(a few hundred representative images, labels not needed)")
    return _export_npu(config, target, builder)


def _export_gpu(config, target):
    from .job import export

    fmt = target.artifact.format
    if fmt not in FORMATS:
        raise UsageError(f"{target.name} runs model.keras itself; there is nothing to export for it")
    result = export(dataclasses.replace(config, target=None, formats=(fmt,)))
    for artifact in result.artifacts:
        artifact.sidecar["target"] = {"name": target.name, "compiled_by": target.compiled_by,
                                      "runs_on": target.runs_on}
        write_artifact_sidecar(artifact.path, artifact.sidecar)
    return result


def _export_npu(config, target, builder):
    from .job import load_calibration_for

    started = time.perf_counter()
    calib = load_calibration_for(config)
    job = _TargetJob.start(config, calib)
    job.target = target
    result = ExportResult(Path(config.out), calibration=calib.summary(), compared_on=job.images.compared_on)
    with atomic_directory(config.out, overwrite=config.overwrite) as tmp, scratch_folder(tmp, config.out) as work_dir:
        job.work, job.out = work_dir, tmp
        write_json(tmp / CALIBRATION_FILE, calib.manifest)
        for artifact in builder(job):
            result.artifacts.append(artifact)
            if config.verbose:
                say(f"{artifact.path.name}: {artifact.size_bytes / 1e6:.2f} MB, "
                    f"{_parity_text(artifact.parity)} [{'ok' if artifact.passed else 'FAILED'}]")
        summary = result.summary()
        summary["target"] = target.name
        write_json(tmp / SUMMARY_FILE, summary)
    result.moved_to(config.out)
    if config.verbose:
        say(f"export --target {target.name} done in {time.perf_counter() - started:.0f}s -> {config.out}")
    result.raise_if_failed(_parity_text, threshold=False)
    return result


class _TargetJob(ExportJob):
    """An export job for one NPU target: the compiled artifacts are measured from outputs the target's
    own runner produced, and their sidecars carry a ``target`` block."""

    target: Any = None

    @property
    def inputs(self) -> np.ndarray:
        return self.model_inputs(InputDtype.FLOAT32)

    def parity(self, outputs: np.ndarray, evidence: str, ran_on: str, runtime: str, version: str) -> dict:
        from .parity import compare

        result = compare(self.reference, outputs, "int8", self.config.min_agreement, self.images.labels)
        result.update(compared_on=self.images.compared_on, precision="int8", runtime_settings={},
                      runtime=runtime, runtime_version=version, evidence=evidence, ran_on=ran_on)
        return result

    def target_sidecar(self, path: Path, fmt: str, files: list[Path], input_spec: dict, quantization: dict,
                       parity: dict, target_block: dict, versions: list[str], layout: str = "NHWC",
                       io: dict | None = None) -> dict[str, Any]:
        from .keras_graph import INPUT_NAME

        return artifact_sidecar(
            path, fmt, files, self.source, self.source_info, batch=1, layout=layout,
            input_names=(io or {}).get("input") or {"name": INPUT_NAME},
            input_dtype=input_spec["dtype"], input_quantization=input_spec["quantization"],
            output_names=(io or {}).get("output") or {"name": self.source.output_kind},
            quantization=quantization_block(Mode.INT8, quantization["method"], quantization["details"],
                                            self.calib.summary(), [], quantization.get("per_channel", True)),
            parity=parity, versions=versions, target=target_block)


def _artifact(path: Path, fmt: str, sidecar: dict, seconds: float):
    write_artifact_sidecar(path, sidecar)
    return ArtifactResult(fmt, "int8", sidecar["input"]["dtype"], path, sidecar, seconds)


def _parity_text(parity: dict) -> str:
    from .parity import describe

    return f"{describe(parity)} ({parity.get('evidence', 'measured')}: {parity.get('ran_on', '')})"


# -- Qualcomm HTP ------------------------------------------------------------------------------------
def _build_qnn(ctx: _TargetJob):
    from . import qnn
    from .backends import onnx as onnx_export
    from .keras_graph import output_model
    from .parity import run_batches
    from ..runtime.backends import open_backend

    config = ctx.config
    soc = qnn.validate_soc(config.soc or qnn.DEFAULT_SOC)
    started = time.perf_counter()
    layout = ctx.source.layout if ctx.source.source_kind == "onnx" else "NHWC"
    calib_input = "float32_nchw" if layout == "NCHW" else "float32"
    if ctx.source.source_kind == "onnx":  # the given file itself (NCHW kept), as the ONNX format's export
        from .sources.onnx_source import fp32_file

        fp32, converted = fp32_file(ctx.source, ctx.work), {"converter": "none (the given ONNX file)"}
    else:
        fp32 = ctx.work / "fp32.onnx"
        converted = onnx_export.convert(output_model(ctx.source), fp32, "float32", config.opset)
    qdq = ctx.out / "model_qnn_int8.onnx"
    if config.qnn_scheme == "edgetl":
        details = qnn.quantize_edgetl(fp32, qdq, ctx.calib, ctx.work, calib_input)
    else:
        static = ctx.work / "static.onnx"
        qnn.fix_batch(fp32, static)
        details = qnn.quantize(static, qdq, ctx.calib, config.qnn_scheme, calib_input)
    details = {**converted, **details, "static_batch": 1}
    quantized_at = time.perf_counter()
    compiled = qnn.compile_context(qdq, ctx.out / f"model_qnn_int8_{soc.lower()}_ctx.onnx", soc,
                                   config.allow_cpu_fallback)
    ctx_path = ctx.out / f"model_qnn_int8_{soc.lower()}_ctx.onnx"
    inputs = ctx.model_inputs(InputDtype.FLOAT32, layout)

    # The QDQ model on ONNX Runtime's CPU EP (what any ORT runs), then the compiled model on the HTP.
    cpu = open_backend(qdq, "cpu")
    cpu_parity = ctx.parity(run_batches(cpu.run, inputs, 1), "measured", "onnxruntime CPU EP (QDQ)",
                            "onnxruntime", cpu.version())
    htp = open_backend(ctx_path, "npu", soc=soc, allow_cpu_fallback=config.allow_cpu_fallback, simulate=True)
    run_started = time.perf_counter()
    htp_outputs = run_batches(htp.run, inputs, 1)
    wall_ms = (time.perf_counter() - run_started) * 1e3 / len(inputs)
    evidence = "simulated" if htp.simulated else "measured"
    htp_parity = ctx.parity(htp_outputs, evidence, htp.placement.devices[0], "onnxruntime-qnn", _qnn_version())
    htp_parity["vs_cpu_qdq_max_abs_diff"] = float(np.abs(htp_outputs - run_batches(cpu.run, inputs, 1)).max())
    del cpu, htp
    input_spec = {"dtype": "float32", "quantization": None}
    quant = {"method": f"QDQ for the HTP ({details['quantizer']})", "details": details,
             "per_channel": details["per_channel"]}
    block = {"name": ctx.target.name, "kind": "npu", "soc": soc, "soc_name": compiled["soc_name"],
             "compiled_by": ctx.target.compiled_by, "nodes": compiled["nodes"], "cpu_nodes": compiled["cpu_nodes"],
             "allow_cpu_fallback": config.allow_cpu_fallback}
    qdq_block = {**block, "role": "static QDQ model (the HTP compiles it at load; also runs on any ORT CPU EP)",
                 "compiled": ctx_path.name}
    ctx_block = {**block, "role": "EPContext model: QNN context binary for the SoC, embedded (embed_mode 1)",
                 "compile_seconds": compiled["compile_seconds"], "embed_mode": 1, "uncompiled": qdq.name,
                 "cpu_runnable": False,
                 "uncompiled_sha256": sha256_file(qdq),
                 "simulator_wall_ms_per_image": {"value": round(wall_ms, 1), "evidence": "simulated",
                                                 "note": "x86 HTP simulator wall time, not device latency"}
                 if htp_parity["evidence"] == "simulated" else None}
    io = onnx_export.io_names(qdq) if layout == "NCHW" else None  # the given file's own input name
    yield _artifact(qdq, "onnx", ctx.target_sidecar(qdq, "onnx", [qdq], input_spec, quant, cpu_parity, qdq_block,
                                             QNN_VERSIONS, layout, io), quantized_at - started)
    yield _artifact(ctx_path, "onnx", ctx.target_sidecar(ctx_path, "onnx", [ctx_path], input_spec, quant, htp_parity,
                                                  ctx_block, QNN_VERSIONS, layout, io), compiled["compile_seconds"])


def _qnn_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("onnxruntime-qnn")


# -- Arm Ethos-U -------------------------------------------------------------------------------------
def _build_ethos_u(ctx: _TargetJob):
    from . import vela
    from .keras_graph import output_model

    config, vela_config = ctx.config, ctx.target.vela_config
    started = time.perf_counter()
    plain = ctx.out / "model_tflite_int8_io8.tflite"
    details = vela.convert_int8_io(output_model(ctx.source), plain, ctx.calib)
    converted_at = time.perf_counter()
    compiled = vela.compile(plain, ctx.work / "vela", vela_config, config.system_config, config.memory_mode,
                            config.allow_cpu_fallback)
    npu_model = ctx.out / f"model_{vela_config}_vela.tflite"
    summary_csv = ctx.out / f"model_{vela_config}_vela_summary.csv"
    shutil.move(str(compiled["compiled"]), npu_model)
    shutil.move(str(compiled["summary_csv"]), summary_csv)

    reference_int8, optimized_int8 = vela.reference_kernel_outputs(plain, ctx.inputs)
    scale, zero = vela.output_quantization(plain)
    bit_exact = {"identical_outputs": float(np.mean((reference_int8 == optimized_int8).all(axis=1))),
                 "max_lsb_diff": int(np.abs(reference_int8.astype(np.int32) - optimized_int8).max()),
                 "compared": "LiteRT BUILTIN_REF vs default (optimized/XNNPACK) kernels, int8 outputs"}
    parity = ctx.parity(vela.dequantize(reference_int8, scale, zero), "simulated",
                        "LiteRT reference kernels (BUILTIN_REF), uncompiled int8 model", "litert", _litert_version())
    parity["reference_vs_optimized_kernels"] = bit_exact
    input_quant = _input_quantization(plain)
    input_spec = {"dtype": "int8", "quantization": input_quant}
    quant = {"method": "tflite full integer, int8 I/O", "details": details, "per_channel": True}
    estimate = compiled["estimate"]
    block = {"name": ctx.target.name, "kind": "npu", "accelerator_config": vela_config,
             "compiled_by": f"Vela {compiled['vela_version']}", "placement": compiled["placement"],
             "allow_cpu_fallback": config.allow_cpu_fallback}
    plain_block = {**block, "role": "uncompiled full-integer model (Vela input; runs on any LiteRT)",
                   "compiled": npu_model.name}
    npu_block = {**block, "role": "Vela-compiled model (one ethos-u custom op; needs the Ethos-U driver)",
                 "compile_seconds": compiled["compile_seconds"], "uncompiled": plain.name,
                 "uncompiled_sha256": sha256_file(plain), "cpu_runnable": False,
                 "system_config": estimate.get("system_config"), "memory_mode": estimate.get("memory_mode"),
                 "estimate": {"evidence": "estimated", "source": f"Vela {compiled['vela_version']} summary CSV",
                              **estimate}}
    yield _artifact(plain, "tflite", ctx.target_sidecar(plain, "tflite", [plain], input_spec, quant, parity, plain_block,
                                                 VELA_VERSIONS), converted_at - started)
    yield _artifact(npu_model, "tflite", ctx.target_sidecar(npu_model, "tflite", [npu_model, summary_csv], input_spec,
                                                     quant, parity, npu_block, VELA_VERSIONS),
                    compiled["compile_seconds"])


def _input_quantization(path: Path) -> dict[str, float]:
    from .backends.tflite import input_quantization

    return input_quantization(path)


def _litert_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("ai-edge-litert")
