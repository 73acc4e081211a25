"""Where the time goes: per-op profiles of an artifact on its own runtime, and OpenVINO's benchmark_app.

``profile_artifact`` runs the artifact ``runs`` times with the runtime's own profiler and returns the
top ops by time and the share of time by op kind:

* ONNX Runtime: session profiling (``enable_profiling``), one event per node and run; a node's time
  is its median over the runs (the first runs carry allocation and thread start-up);
* OpenVINO: the CPU plugin's performance counters (``PERF_COUNT``), ``real_time`` of executed nodes,
  median over the runs;
* LiteRT: not available. ai-edge-litert 2.3 has no op profiler in its Python API (the interpreter's
  ``experimental_force_delegate_node_profiling`` feeds the C++ profiler that only the native
  benchmark_model tool reads, and the wheel's ``litert-benchmark`` times whole runs), so TFLite
  artifacts get ``{"available": false, "reason": ...}``.

Kinds: ``depthwise`` (grouped convolutions with one input channel per group), ``pointwise`` (1x1
convolutions and fully connected layers: the matrix multiplications), ``other`` (everything else:
the stem and other k x k convolutions, adds, pooling, quantize/dequantize, transposes). Each op is
classified from the artifact's own graph (weight shapes and groups), not from kernel names.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("depthwise", "pointwise", "other")
TOP_OPS = 10
LITERT_UNAVAILABLE = ("ai-edge-litert 2.3 has no per-op profiler in Python: its Interpreter exposes none and "
                      "its litert-benchmark tool times whole runs; per-op profiles need the native C++ "
                      "benchmark_model, which the wheel does not ship")


def profile_artifact(path: Path, fmt: str, batch: np.ndarray, runs: int = 20, threads: int | None = None,
                     **backend_options) -> dict[str, Any]:
    path = Path(path)
    if fmt == "onnx":
        ops, method = _onnx_ops(path, batch, runs, threads, backend_options.get("exact_int8", True)), \
            "onnxruntime session profiling (median per node)"
    elif fmt == "openvino":
        ops, method = _openvino_ops(path, batch, runs, threads, backend_options.get("precision", "f32")), \
            "openvino PERF_COUNT real_time (median per node)"
    else:
        return {"available": False, "reason": LITERT_UNAVAILABLE}
    return summarize(ops, method, runs, len(batch))


def summarize(ops: list[dict[str, Any]], method: str, runs: int, batch_size: int) -> dict[str, Any]:
    """ops: [{name, type, kind, ms}] per run -> top ops and shares by kind."""
    total = sum(op["ms"] for op in ops) or 1e-12
    by_kind = {kind: sum(op["ms"] for op in ops if op["kind"] == kind) for kind in KINDS}
    by_type: dict[str, float] = {}
    for op in ops:
        by_type[op["type"]] = by_type.get(op["type"], 0.0) + op["ms"]
    top = sorted(ops, key=lambda op: op["ms"], reverse=True)[:TOP_OPS]
    return {
        "available": True, "method": method, "runs": runs, "batch_size": batch_size, "ops": len(ops),
        "total_ms": total,
        "by_kind": {kind: {"ms": ms, "share": ms / total} for kind, ms in by_kind.items()},
        "by_op_type": {t: {"ms": ms, "share": ms / total}
                       for t, ms in sorted(by_type.items(), key=lambda item: item[1], reverse=True)},
        "top_ops": [{**op, "share": op["ms"] / total} for op in top],
    }


# -- ONNX Runtime -------------------------------------------------------------------------------------
def onnx_kinds(path: Path) -> dict[str, str]:
    """Node name -> kind, from an ONNX graph's convolutions: ``group`` and the weight shape (plain, behind
    a DequantizeLinear, or of ORT's fused QLinearConv/NCHWc Conv in the optimised graph it saved)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            shapes[node.output[0]] = tuple(numpy_helper.to_array(node.attribute[0].t).shape)
    kinds = {}
    for node in graph.node:
        if node.op_type in _MATMULS:
            kinds[node.name] = "pointwise"
        if node.op_type not in ("Conv", "FusedConv", "QLinearConv", "NhwcFusedConv") or len(node.input) < 2:
            continue
        weight = node.input[3 if node.op_type == "QLinearConv" else 1]
        source = producers.get(weight)
        if source is not None and source.op_type == "DequantizeLinear":
            weight = source.input[0]
        shape = shapes.get(weight)
        attributes = {a.name: a for a in node.attribute}
        group = attributes["group"].i if "group" in attributes else 1
        kernel = tuple(attributes["kernel_shape"].ints) if "kernel_shape" in attributes else None
        if shape is None and kernel:
            shape = (None, None, *kernel)
        kinds[node.name] = _conv_kind(shape, group)
    return kinds


_MATMULS = ("Gemm", "QGemm", "FusedGemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FullyConnected",
            "FullyConnectedQuantizedLegacy", "FullyConnectedQuantized")


def _conv_kind(shape: tuple[int, ...] | None, group: int) -> str:
    """shape: [C_out, C_in / group, kh, kw]."""
    if shape is None or len(shape) != 4:
        return "other"
    if group > 1 and (shape[1] == 1 or shape[1] is None):
        return "depthwise"
    return "pointwise" if shape[2] == shape[3] == 1 and group == 1 else "other"


_ORT_SUFFIX = re.compile(r"(_token_\d+)?(_kernel_time)?$")


def _onnx_ops(path: Path, batch: np.ndarray, runs: int, threads: int | None, exact_int8: bool) -> list[dict]:
    import onnxruntime as ort

    from .metadata import read_json
    from .runtime import backends

    options = backends.ort_session_options(threads, exact_int8, artifact=path)
    options.enable_profiling = True
    options.log_severity_level = 3  # saving an NCHWc-optimised graph warns that it is machine-specific
    with tempfile.TemporaryDirectory(prefix="edgetl-ort-profile-") as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        # The graph ORT runs (fused, NCHWc-blocked, QDQ folded into QLinear ops) names the profiled nodes.
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: batch}
        for _ in range(runs):
            session.run(None, feed)
        events = read_json(session.end_profiling())
        kinds = {**onnx_kinds(path), **onnx_kinds(Path(tmp) / "optimized.onnx")}
    times: dict[str, list[float]] = {}
    types: dict[str, str] = {}
    event_names: dict[str, str] = {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        name = _ORT_SUFFIX.sub("", event["name"])
        event_names[name] = event["name"][:-len("_kernel_time")]
        times.setdefault(name, []).append(event["dur"] / 1e3)
        types[name] = event.get("args", {}).get("op_name", "?")
    ops = []
    for name, values in times.items():
        kind = kinds.get(name) or kinds.get(event_names[name]) or ("pointwise" if types[name] in _MATMULS else "other")
        ops.append({"name": name, "type": types[name], "kind": kind, "ms": float(np.median(values))})
    return ops


# -- OpenVINO -----------------------------------------------------------------------------------------
def openvino_kinds(model) -> dict[str, str]:
    kinds = {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind in ("Convolution", "GroupConvolution"):
            shape = op.input(1).get_partial_shape()
            dims = [d.get_length() if d.is_static else None for d in shape]
            if kind == "GroupConvolution" and len(dims) == 5:  # [groups, C_out/g, C_in/g, kh, kw]
                kinds[op.get_friendly_name()] = "depthwise" if dims[2] == 1 else "other"
            else:
                kinds[op.get_friendly_name()] = _conv_kind(tuple(dims), 1)
        elif kind == "MatMul":
            kinds[op.get_friendly_name()] = "pointwise"
    return kinds


def _openvino_ops(path: Path, batch: np.ndarray, runs: int, threads: int | None, precision: str | None) -> list[dict]:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    config: dict[str, Any] = {"PERF_COUNT": True}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    kinds = openvino_kinds(model)
    times: dict[str, list[float]] = {}
    types: dict[str, str] = {}
    for _ in range(runs):
        request.infer({0: batch})
        for info in request.profiling_info:
            if str(info.status).split(".")[-1] != "EXECUTED":
                continue
            times.setdefault(info.node_name, []).append(info.real_time.total_seconds() * 1e3)
            types[info.node_name] = f"{info.node_type} ({info.exec_type})"
    return [{"name": name, "type": types[name], "kind": kinds.get(name) or _openvino_kind(types[name]),
             "ms": float(np.median(values))} for name, values in times.items()]


def _openvino_kind(node_type: str) -> str:
    """Kind of a runtime node whose name is not an op of the model (fused or renamed by the plugin):
    from its layer type and kernel (``Convolution (brgconv_avx512_1x1_I8)``)."""
    layer = node_type.split(" ")[0]
    if layer in _MATMULS:
        return "pointwise"
    if layer == "GroupConvolution" or "_dw_" in node_type:
        return "depthwise"
    return "pointwise" if layer == "Convolution" and "1x1" in node_type else "other"


def native_precision() -> str | None:
    """What OpenVINO's CPU plugin runs FP32 models in when not told (bf16 on AVX-512 BF16/AMX CPUs)."""
    try:
        import openvino as ov

        return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()
    except Exception:  # no OpenVINO, or a plugin without the property
        return None


# -- benchmark_app ------------------------------------------------------------------------------------
def benchmark_app_path() -> str | None:
    """OpenVINO's benchmark_app: on PATH, or in the bin folder of this Python (a virtualenv's)."""
    beside = Path(sys.executable).with_name("benchmark_app")
    return shutil.which("benchmark_app") or (str(beside) if beside.exists() else None)


def _as_ms(match: re.Match) -> float:
    return float(match.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)]


def benchmark_app(path: Path, shape: list[int] | None, precision: str | None, threads: int | None = None,
                  seconds: int = 2) -> dict[str, Any]:
    """benchmark_app's latency median (ms) for an IR; ``shape`` for dynamic models ([1,H,W,3]),
    ``precision`` f32 or None (the plugin's default)."""
    tool = benchmark_app_path()
    if tool is None:
        return {"available": False, "reason": "benchmark_app not found"}
    command = [tool, "-m", str(path), "-d", "CPU", "-hint", "latency", "-t", str(seconds)]
    if shape:
        command += ["-shape", "[" + ",".join(str(d) for d in shape) + "]"]
    if precision:
        command += ["-infer_precision", precision]
    if threads:
        command += ["-nthreads", str(threads)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120 + seconds)
    except subprocess.TimeoutExpired:
        return {"available": False, "reason": "benchmark_app timed out"}
    # benchmark_app switches units with the magnitude: "475.72 us" below a millisecond, "4.31 ms" above.
    found = {key: re.search(rf"^\[ INFO \]\s+{key}:\s+([\d.]+) (us|ms|s)\b", done.stdout, re.M)
             for key in ("Median", "Average", "Min", "Max")}
    if done.returncode != 0 or not found["Median"]:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"available": False, "reason": f"benchmark_app failed: {tail[0][:200]}"}
    throughput = re.search(r"^\[ INFO \] Throughput:\s+([\d.]+) FPS", done.stdout, re.M)
    return {"available": True, "median_ms": _as_ms(found["Median"]),
            "average_ms": _as_ms(found["Average"]) if found["Average"] else None,
            "throughput_fps": float(throughput.group(1)) if throughput else None,
            "precision": precision or "default", "seconds": seconds,
            "command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(command))}
