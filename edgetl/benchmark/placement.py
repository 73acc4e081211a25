"""Which devices serve a target, and where the runtime placed an artifact's nodes (CPU fallback on
gpu/npu is never silent)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CheckFailed, DeviceUnavailable
from ..metadata import read_json, read_sidecar
from ..runtime import backends

if TYPE_CHECKING:
    from .config import Artifact, BenchConfig

log = logging.getLogger("edgetl")


def _cpu_runnable(path: Path) -> bool:
    """Compiled NPU artifacts (Vela's ethos-u op, QNN EPContext) load only with their device's runtime;
    a folder listing skips them (``edgetl bench --target npu:...`` picks them up)."""
    return (read_sidecar(path).get("target") or {}).get("cpu_runnable", True) is not False


def target_devices(target: str, available: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Per artifact format, the devices of this machine that serve ``target`` (empty list: none)."""
    available = backends.available_devices() if available is None else available
    ort = available.get("onnxruntime", [])
    ov = available.get("openvino", [])
    lite = available.get("litert", [])
    ov_name = backends.OPENVINO_DEVICE[target]
    return {
        "onnx": [p for p in backends.ORT_PROVIDERS[target] if p in ort],
        "openvino": [d for d in ov if d == ov_name or d.startswith(ov_name + ".")],
        "tflite": ([d for d in lite if not d.startswith("delegate:")] if target == "cpu"
                   else [f"delegate:{d}" for d in backends._tflite_delegates(target)] if "litert" in available
                   else []),
    }


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


def node_placement(backend, path: Path, sample: np.ndarray, threads: int | None) -> dict[str, Any]:
    """Nodes per device as the runtime placed them (the evidence against silent CPU fallback)."""
    placement = backend.placement
    info: dict[str, Any] = {"requested": placement.requested, "devices": list(placement.devices),
                            "nodes": {}, "method": None, "verified": True}
    if backend.format == "onnx":
        info["nodes"], info["method"] = _ort_profile_nodes(backend, path, sample, threads), "onnxruntime profiling"
    elif backend.format == "openvino":
        compiled = backend.compiled
        try:
            info["devices"] = list(compiled.get_property("EXECUTION_DEVICES"))
        except Exception:  # older plugins lack the property; the requested device stands
            pass
        counts: dict[str, int] = {}
        device = info["devices"][0] if len(info["devices"]) == 1 else None
        for op in compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            kind = str(rt["layerType"]) if "layerType" in rt else op.get_type_name()
            if kind in ("Parameter", "Result", "Input", "Output", "Constant"):
                continue
            where = str(rt["affinity"]) if "affinity" in rt else device or "unknown"
            counts[where] = counts.get(where, 0) + 1
        info["nodes"], info["method"] = counts, "openvino runtime model"
        info["verified"] = "unknown" not in counts
    elif backend.format == "tflite":
        # LiteRT's Python API lists the model's ops, not which delegate took them: on cpu they all run
        # on the CPU (XNNPACK or builtin kernels); on gpu/npu the split cannot be proven from here.
        ops = len(backend.interpreter._get_ops_details())
        if placement.requested == "cpu":
            info["nodes"], info["method"] = {"CPU": ops}, "litert ops (XNNPACK/builtin kernels on CPU)"
        else:
            info["nodes"], info["method"] = {}, "unverifiable: LiteRT does not report per-node delegation"
            info["total_nodes"], info["verified"] = ops, False
    fallback = {k: v for k, v in info["nodes"].items() if k.upper().startswith("CPU")}
    info["cpu_fallback_nodes"] = sum(fallback.values()) if placement.requested != "cpu" else 0
    return info


def _ort_profile_nodes(backend, path: Path, sample: np.ndarray, threads: int | None) -> dict[str, int]:
    """A second session with profiling on and the same providers: one run, nodes counted per EP."""
    ort = backend._ort
    options = backends.ort_session_options(threads, exact_int8=bool(backend.settings))
    options.enable_profiling = True
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgetl-ort-profile-") as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), sess_options=options, providers=backend.session.get_providers())
        session.run(None, {backend.input_name: sample})
        events = read_json(session.end_profiling())
    counts: dict[str, set] = {}
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and "provider" in args:
            counts.setdefault(args["provider"], set()).add(args.get("node_index", event.get("name")))
    return {provider.replace("ExecutionProvider", ""): len(nodes) for provider, nodes in counts.items()}


class StrictPlacementError(CheckFailed):
    """--strict and a CPU fallback: stops the whole bench (unlike one unusable artifact)."""


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

