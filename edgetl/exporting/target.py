"""``edgetl export --target TARGET``: what one registered target runs, with its sidecars.

* ``npu:qnn-htp`` -> ``model_qnn_int8.onnx`` (static batch 1, QDQ for the HTP; runs on any ONNX Runtime)
  and ``model_qnn_int8_<soc>_ctx.onnx`` (the EPContext model compiled for ``--soc``), see ``export.qnn``.
* ``npu:ethos-u*`` -> ``model_tflite_int8_io8.tflite`` (full integer, int8 I/O, uncompiled) and
  ``model_<config>_vela.tflite`` (+ ``model_<config>_vela_summary.csv``, Vela's estimate), see
  ``export.vela``.
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
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckFailed, UsageError
from ..metadata import ARTIFACT_SCHEMA, atomic_directory, sha256_file, sidecar_path, software_versions, write_json

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
    from . import ExportConfig, export

    fmt = target.artifact.format
    if fmt not in ("onnx", "tflite", "openvino"):
        raise UsageError(f"{target.name} runs model.keras itself; there is nothing to export for it")
    result = export(dataclasses.replace(config, target=None, formats=(fmt,), model_dir=None, quantize=None))
    for artifact in result.artifacts:
        artifact.sidecar["target"] = {"name": target.name, "compiled_by": target.compiled_by,
                                      "runs_on": target.runs_on}
        write_json(sidecar_path(artifact.path), artifact.sidecar)
    return result


def _export_npu(config, target, builder):
    from . import ExportResult, SUMMARY_FILE, CALIBRATION_FILE, _check_set, _keras_reference, _recipe_without_tensorflow, _say
    from .calibration import load_calibration
    from .keras_graph import load_source

    started = time.perf_counter()
    recipe = _recipe_without_tensorflow(config)
    calib = load_calibration(config.calib, recipe, config.calib_size)
    source = load_source(config.model, config.input_size, list(config.labels) or None)
    checks = _check_set(config, source, calib)
    _say(config, f"parity images: {checks.compared_on}")
    reference = _keras_reference(source, checks)
    result = ExportResult(Path(config.out), calibration=calib.summary(), compared_on=checks.compared_on)
    context = _Context(config, target, source, calib, checks, reference)
    with tempfile.TemporaryDirectory(prefix="edgetl-target-work-") as work_dir, \
            atomic_directory(config.out, overwrite=config.overwrite) as tmp:
        context.work, context.out = Path(work_dir), tmp
        write_json(tmp / CALIBRATION_FILE, calib.manifest)
        for artifact in builder(context):
            result.artifacts.append(artifact)
            _say(config, f"{artifact.path.name}: {artifact.size_bytes / 1e6:.2f} MB, "
                         f"{_parity_text(artifact.parity)} [{'ok' if artifact.passed else 'FAILED'}]")
        summary = result.summary()
        summary["target"] = target.name
        write_json(tmp / SUMMARY_FILE, summary)
    for artifact in result.artifacts:
        artifact.path = Path(config.out) / artifact.path.name
    _say(config, f"export --target {target.name} done in {time.perf_counter() - started:.0f}s -> {config.out}")
    if result.failed:
        error = CheckFailed(f"{len(result.failed)} artifact(s) failed parity (written, marked failing): "
                            + "; ".join(f"{a.path.name} {_parity_text(a.parity)}" for a in result.failed[:3]))
        error.result = result
        raise error
    return result


@dataclasses.dataclass
class _Context:
    config: Any
    target: Any
    source: Any
    calib: Any
    checks: Any
    reference: np.ndarray
    work: Path | None = None
    out: Path | None = None

    @property
    def inputs(self) -> np.ndarray:
        return self.source.recipe.normalize(self.checks.pixels)

    def parity(self, outputs: np.ndarray, evidence: str, ran_on: str, runtime: str, version: str) -> dict:
        from .parity import compare

        result = compare(self.reference, outputs, "int8", self.config.min_agreement, self.checks.labels)
        result.update(compared_on=self.checks.compared_on, precision="int8", runtime_settings={},
                      runtime=runtime, runtime_version=version, evidence=evidence, ran_on=ran_on)
        return result

    def sidecar(self, path: Path, fmt: str, files: list[Path], input_spec: dict, quantization: dict,
                parity: dict, target_block: dict, versions: list[str]) -> dict[str, Any]:
        from .keras_graph import INPUT_NAME

        info = self.source.describe()
        height, width = self.source.input_size
        return {
            "schema": ARTIFACT_SCHEMA, "format": fmt, "file": path.name,
            "files": {f.name: sha256_file(f) for f in files},
            "sha256": sha256_file(path), "size_bytes": sum(f.stat().st_size for f in files),
            "labels": list(self.source.labels),
            "input": {"name": INPUT_NAME, "shape": [1, height, width, 3], "layout": "NHWC", **input_spec},
            "output": {"name": self.source.output_kind, "kind": self.source.output_kind, "dtype": "float32",
                       "softmax": "apply in float" if self.source.output_kind == "logits" else "in graph"},
            "preprocessing": self.source.recipe.to_dict(),
            "quantization": {"mode": "int8", "per_channel": quantization.get("per_channel", True),
                             "calibration": self.calib.summary(), "float_layers": [], **quantization},
            "source_model": {"sha256": info["sha256"], "path": info["path"], "backbone": info["backbone"]},
            "versions": software_versions(versions),
            "parity": parity,
            "target": target_block,
        }


def _artifact(path: Path, fmt: str, sidecar: dict, seconds: float):
    from . import ArtifactResult

    write_json(sidecar_path(path), sidecar)
    return ArtifactResult(fmt, "int8", sidecar["input"]["dtype"], path, sidecar, seconds)


def _parity_text(parity: dict) -> str:
    from .parity import describe

    return f"{describe(parity)} ({parity.get('evidence', 'measured')}: {parity.get('ran_on', '')})"


# -- Qualcomm HTP ------------------------------------------------------------------------------------
def _build_qnn(ctx: _Context):
    from . import onnx as onnx_export
    from . import qnn
    from .keras_graph import output_model
    from .parity import run_batches
    from ..runtime.backends import open_backend

    config = ctx.config
    soc = qnn.check_soc(config.soc or qnn.DEFAULT_SOC)
    started = time.perf_counter()
    fp32 = ctx.work / "fp32.onnx"
    converted = onnx_export.convert(output_model(ctx.source), fp32, "float32", config.opset)
    qdq = ctx.out / "model_qnn_int8.onnx"
    if config.qnn_scheme == "edgetl":
        details = qnn.quantize_edgetl(fp32, qdq, ctx.calib, ctx.work)
    else:
        static = ctx.work / "static.onnx"
        qnn.fix_batch(fp32, static)
        details = qnn.quantize(static, qdq, ctx.calib, config.qnn_scheme)
    details = {**converted, **details, "static_batch": 1}
    quantized_at = time.perf_counter()
    compiled = qnn.compile_context(qdq, ctx.out / f"model_qnn_int8_{soc.lower()}_ctx.onnx", soc,
                                   config.allow_cpu_fallback)
    ctx_path = ctx.out / f"model_qnn_int8_{soc.lower()}_ctx.onnx"
    inputs = ctx.inputs

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
    yield _artifact(qdq, "onnx", ctx.sidecar(qdq, "onnx", [qdq], input_spec, quant, cpu_parity, qdq_block,
                                             QNN_VERSIONS), quantized_at - started)
    yield _artifact(ctx_path, "onnx", ctx.sidecar(ctx_path, "onnx", [ctx_path], input_spec, quant, htp_parity,
                                                  ctx_block, QNN_VERSIONS), compiled["compile_seconds"])


def _qnn_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("onnxruntime-qnn")


# -- Arm Ethos-U -------------------------------------------------------------------------------------
def _build_ethos_u(ctx: _Context):
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
    yield _artifact(plain, "tflite", ctx.sidecar(plain, "tflite", [plain], input_spec, quant, parity, plain_block,
                                                 VELA_VERSIONS), converted_at - started)
    yield _artifact(npu_model, "tflite", ctx.sidecar(npu_model, "tflite", [npu_model, summary_csv], input_spec,
                                                     quant, parity, npu_block, VELA_VERSIONS),
                    compiled["compile_seconds"])


def _input_quantization(path: Path) -> dict[str, float]:
    from .tflite import input_quantization

    return input_quantization(path)


def _litert_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("ai-edge-litert")
