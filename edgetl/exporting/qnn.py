"""Qualcomm Hexagon NPU (``npu:qnn-htp``): a static-shape QDQ ONNX quantized the way the HTP wants, and
the EPContext model the ONNX Runtime QNN EP compiles from it for one Snapdragon SoC.

Steps (``export.target`` drives them):

1. FP32 ONNX (tf2onnx) with the batch fixed to 1: the HTP compiles static graphs, and with a symbolic
   batch ORT leaves shape nodes for the CPU EP (session creation fails with ``disable_cpu_ep_fallback``).
2. ``qnn_preprocess_model`` (ORT's QNN-specific fusions), then ``get_qnn_qdq_config`` + ``quantize``:
   QDQ with uint8 activations and symmetric int8 per-channel weights by default (``QNN_SCHEMES``; ORT's
   own default, per-tensor uint8 weights, and 16-bit activations are measured against it in
   tools/RESULTS-targets.md).
3. Session creation on the QNN HTP backend with ``ep.context_enable`` writes the EPContext model: one
   ``EPContext`` node holding the compiled QNN context binary (embed mode 1) for ``soc_model``. That is
   what a Snapdragon device loads. Nodes the HTP cannot take stay as ordinary ONNX nodes beside it:
   ``cpu_nodes`` names them, and ``allow_cpu_fallback=False`` makes any of them an error.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckFailed, UsageError
from .calibration import CalibrationSet, ort_data_reader
from .backends.onnx import quiet_ort_quantization

# Snapdragon SoCs by chip name (QNN ``soc_model`` takes the name or its numeric id).
SOCS = {
    "SM8850": "Snapdragon 8 Elite Gen 5", "SM8750": "Snapdragon 8 Elite", "SM8650": "Snapdragon 8 Gen 3",
    "SM8550": "Snapdragon 8 Gen 2", "SM8450": "Snapdragon 8 Gen 1", "SM7675": "Snapdragon 7+ Gen 3",
    "SC8380XP": "Snapdragon X Elite", "SC8480XP": "Snapdragon X2 Elite", "QCS6490": "QCS6490 (IoT)",
    "QCS8550": "QCS8550 (IoT)", "SA8295": "SA8295P (automotive)",
}
DEFAULT_SOC = "SM8850"
# name -> (activation type, weight type, per-channel weights); "edgetl" is backends.onnx.quantize_int8
QNN_SCHEMES = {
    "edgetl": ("QUInt8", "QInt8", True),  # quant_pre_process + quantize_static U8S8, then batch fixed
    "u8u8": ("QUInt8", "QUInt8", False),  # get_qnn_qdq_config's defaults
    "u8s8-per-channel": ("QUInt8", "QInt8", True),
    "u16u8": ("QUInt16", "QUInt8", False),  # 16-bit activations (W8A16), slower on the HTP
}
# Simulated on the HTP (fine-tuned efficientnet_lite0, 49 val images, tools/RESULTS-targets.md): edgetl's
# own quantizer agrees 1.000 at cosine 0.998 with FP32; get_qnn_qdq_config's schemes 1.000 at 0.96-0.97.
DEFAULT_SCHEME = "edgetl"


def validate_soc(soc: str) -> str:
    """A chip name edgetl knows. Numeric QNN ``soc_model`` ids are refused: an unknown one is not an
    error for the QNN EP, which then places every node on the CPU ("N node(s) cannot run on the HTP")."""
    name = str(soc).strip().upper()
    if name not in SOCS:
        raise UsageError(f"unknown SoC --soc {soc!r}; known: "
                         + ", ".join(title if title.startswith(chip) else f"{chip} ({title})" for chip, title in SOCS.items()))
    return name


def fix_batch(fp32_path: Path, out_path: Path, batch: int = 1) -> None:
    """The symbolic batch dimension of inputs and outputs -> ``batch`` (static shapes end to end)."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_input_shape_fixed

    model = onnx.load(str(fp32_path))
    for value in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in value.type.tensor_type.shape.dim]
        make_input_shape_fixed(model.graph, value.name, dims)
    fix_output_shapes(model)
    onnx.save(model, str(out_path))


def quantize_edgetl(fp32: Path, out_path: Path, calib: CalibrationSet, work: Path,
                    calib_input: str = "float32") -> dict[str, Any]:
    """edgetl's CPU INT8 recipe (``backends.onnx.quantize_int8``: BN folded and Conv+Relu fused by
    ``quant_pre_process``, uint8 activations, symmetric int8 per-channel weights), ranges collected on the
    dynamic-batch graph, then the QDQ model's batch fixed to 1. The HTP takes every node of it."""
    from .backends import onnx as onnx_export

    pre, cache, dynamic = work / "qnn_pre.onnx", work / "qnn_ranges.json", work / "qnn_qdq_dynamic.onnx"
    onnx_export.preprocess(fp32, pre)
    onnx_export.calibrate(pre, calib, calib_input, "minmax", cache)  # float32_nchw: an NCHW ONNX source
    details = onnx_export.quantize_int8(pre, dynamic, cache, "minmax")
    fix_batch(dynamic, out_path)
    return {**details, "scheme": "edgetl", "quantizer": "edgetl export.onnx.quantize_int8 (quantize_static)"}


def quantize(static_fp32: Path, out_path: Path, calib: CalibrationSet, scheme: str = "u8s8-per-channel",
             calib_input: str = "float32") -> dict[str, Any]:
    """QDQ model for the HTP through ORT's QNN quantization helpers (the non-``edgetl`` schemes)."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize as ort_quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    if scheme not in QNN_SCHEMES:
        raise UsageError(f"unknown QNN quantization scheme {scheme!r}; choose from {', '.join(QNN_SCHEMES)}")
    activation, weight, per_channel = QNN_SCHEMES[scheme]
    with tempfile.TemporaryDirectory(prefix="edgetl-qnn-") as tmp, quiet_ort_quantization():
        pre = Path(tmp) / "pre.onnx"
        changed = qnn_preprocess_model(str(static_fp32), str(pre))
        source = pre if changed else static_fp32
        input_name = onnx.load(str(source)).graph.input[0].name
        config = get_qnn_qdq_config(str(source), ort_data_reader(calib, input_name, calib_input, chunk=1),
                                    activation_type=getattr(QuantType, activation),
                                    weight_type=getattr(QuantType, weight), per_channel=per_channel,
                                    weight_symmetric=True if weight == "QInt8" else None)
        ort_quantize(str(source), str(out_path), config)
    return {"quant_format": "QDQ", "scheme": scheme, "activation_type": activation.lower().replace("qu", "u"),
            "weight_type": weight.lower().replace("qu", "u").replace("qint", "int"), "per_channel": per_channel,
            "calibration_method": "minmax", "preprocessed": "qnn_preprocess_model" if changed else "none needed",
            "quantizer": "onnxruntime get_qnn_qdq_config + quantize"}


def compile_context(qdq_path: Path, ctx_path: Path, soc: str, allow_cpu_fallback: bool = False) -> dict[str, Any]:
    """Write the EPContext model for ``soc`` (session creation on the HTP backend compiles it)."""
    import onnxruntime as ort

    from ..runtime.backends import qnn_session_options

    ort.set_default_logger_severity(3)  # the plugin warns about Windows-only features on every session
    options = qnn_session_options(soc, allow_cpu_fallback, context_file=ctx_path)
    started = time.perf_counter()
    try:
        ort.InferenceSession(str(qdq_path), sess_options=options)
    except Exception as exc:
        left = cpu_nodes(qdq_path, soc)
        if left:
            raise CheckFailed(f"{len(left)} node(s) cannot run on the HTP and would stay on the CPU: "
                              f"{describe_nodes(left)} (pass --allow-cpu-fallback to accept that)") from None
        raise CheckFailed(f"QNN could not compile {qdq_path.name} ({str(exc).strip().splitlines()[0][:300]})") from None
    seconds = time.perf_counter() - started
    left = context_cpu_nodes(ctx_path)
    return {"compile_seconds": round(seconds, 3), "soc_model": soc, "soc_name": SOCS.get(soc, "QNN soc_model " + soc),
            "embed_mode": 1, "cpu_nodes": left, "nodes": node_counts(qdq_path, left)}


def cpu_nodes(qdq_path: Path, soc: str | None) -> list[dict[str, str]]:
    """Nodes the HTP leaves for the CPU EP: compile with fallback allowed, read the EPContext model."""
    import onnxruntime as ort

    from ..runtime.backends import qnn_session_options

    with tempfile.TemporaryDirectory(prefix="edgetl-qnn-ctx-") as tmp:
        ctx = Path(tmp) / "ctx.onnx"
        ort.InferenceSession(str(qdq_path), sess_options=qnn_session_options(soc, True, context_file=ctx))
        if ctx.exists():
            return context_cpu_nodes(ctx)
        # The HTP took nothing (e.g. a symbolic batch), so no EPContext model was written: one profiled
        # run says which (optimized) nodes the CPU EP ran.
        options = qnn_session_options(soc, True)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(qdq_path), sess_options=options)
        feed = {}
        for spec in session.get_inputs():
            shape = [d if isinstance(d, int) else 1 for d in spec.shape]
            feed[spec.name] = np.zeros(shape, np.uint8 if "uint8" in spec.type else np.float32)
        session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    nodes = {}
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and args.get("provider") == "CPUExecutionProvider":
            name = event.get("name", "").removesuffix("_kernel_time")
            nodes.setdefault(name, {"name": name, "op_type": args.get("op_name", "?")})
    return list(nodes.values())


def context_cpu_nodes(ctx_path: Path) -> list[dict[str, str]]:
    import onnx

    graph = onnx.load(str(ctx_path), load_external_data=False).graph
    return [{"name": n.name, "op_type": n.op_type} for n in graph.node if n.op_type != "EPContext"]


def node_counts(qdq_path: Path, left: list[dict[str, str]]) -> dict[str, int]:
    import onnx

    nodes = onnx.load(str(qdq_path)).graph.node
    compute = [n for n in nodes if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    on_cpu = {n["name"] for n in left}
    # total counts the Q/DQ nodes too; compute_ops the layers themselves (Conv, Add, ...)
    return {"total": len(nodes), "on_npu": len(nodes) - len(left), "on_cpu": len(left),
            "compute_ops": len(compute), "compute_ops_on_npu": sum(n.name not in on_cpu for n in compute)}


def describe_nodes(nodes: list[dict[str, str]], limit: int = 6) -> str:
    text = ", ".join(f"{n['name']} ({n['op_type']})" for n in nodes[:limit])
    return text + (f" and {len(nodes) - limit} more" if len(nodes) > limit else "")
