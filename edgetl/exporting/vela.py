"""Arm Ethos-U microNPUs (``npu:ethos-u*``): a full-integer TFLite with int8 input and output, compiled by
Vela for one accelerator configuration.

* int8 I/O: with float I/O the converter adds a QUANTIZE at the input and a DEQUANTIZE at the output,
  and Vela leaves both on the CPU; with int8 I/O every op can go to the NPU. The runtime (here:
  ``TfliteBackend._quantize_input``) quantizes the normalised image with the input tensor's own scale
  and zero point and dequantizes the logits.
* Vela runs as a subprocess (``python -m ethosu.vela``): its stdout is the op placement
  (``--show-cpu-operations``), its "is not supported on the NPU" warnings name the op and the reason,
  and its summary CSV holds the estimate (``inference_time``, ``cycles_*``, SRAM/DRAM/flash used) at
  the system config it compiled for. The compiled ``*_vela.tflite`` holds one ``ethos-u`` custom op:
  only an Ethos-U driver runs it, so numbers are checked on the uncompiled int8 model with LiteRT's
  reference kernels, which Vela's NPU ops are specified to match bit for bit.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckFailed, DeviceUnavailable, UsageError
from .calibration import CalibrationSet

VELA_EXTRA = ".[ethos-u]"
_OPS = re.compile(r"^(CPU|NPU) operators = (\d+)")
_PLACED = re.compile(r"^\s+(CPU|NPU): (\w+) = (.*?)(?: \(outputs .*\))?$")
# Vela's "supported operators" warnings: the legacy compiler's form and the regor (5.x) form.
_UNSUPPORTED = re.compile(r"^Warning: (\w+) '(.*)' is not supported on the NPU"
                          r"|^Warning \(supported operators\) operator: (\w+), ofm: '(.*)'")
# Estimate fields kept from Vela's summary CSV (all of it stays beside the artifact).
SUMMARY_FIELDS = ("accelerator_configuration", "system_config", "memory_mode", "core_clock", "inference_time",
                  "inferences_per_second", "cycles_npu", "cycles_total", "sram_memory_used", "dram_memory_used",
                  "on_chip_flash_memory_used", "off_chip_flash_memory_used", "nn_macs", "total_original_weights",
                  "total_npu_encoded_weights", "weights_storage_area", "feature_map_storage_area")


def convert_int8_io(model, path: Path, calib: CalibrationSet) -> dict[str, Any]:
    """Keras graph -> full-integer TFLite, int8 in and out (builtins INT8 only)."""
    import tensorflow as tf

    from .backends.tflite import full_integer, write_converted

    write_converted(full_integer(tf.lite.TFLiteConverter.from_keras_model(model), calib, "float32", tf.int8, tf.int8),
                    path)
    return {"converter": "TFLiteConverter.from_keras_model", "weights": "int8 per-channel",
            "activations": "int8 per-tensor", "io": {"input": "int8", "output": "int8"}}


def vela_version() -> str:
    try:
        import importlib.metadata

        return importlib.metadata.version("ethos-u-vela")
    except Exception:
        raise DeviceUnavailable(f"Ethos-U targets need Vela: pip install '{VELA_EXTRA}'") from None


def compile(tflite: Path, out_dir: Path, config: str, system_config: str | None = None,
            memory_mode: str | None = None, allow_cpu_fallback: bool = False) -> dict[str, Any]:
    """Vela-compile ``tflite`` for ``config`` into ``out_dir``: ``<stem>_vela.tflite`` and the summary
    CSV. Returns placement, the estimate and the compile time; ops left for the CPU are an error
    unless ``allow_cpu_fallback``."""
    version = vela_version()
    system_config, memory_mode = resolve_options(config, system_config, memory_mode)
    command = [sys.executable, "-m", "ethosu.vela", str(tflite), "--accelerator-config", config,
               "--output-dir", str(out_dir), "--show-cpu-operations"]
    if system_config:
        command += ["--system-config", system_config]
    if memory_mode:
        command += ["--memory-mode", memory_mode]
    if system_config or memory_mode:
        command += ["--config", _default_ini()]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise CheckFailed(f"Vela could not compile {tflite.name} for {config} ({last[:300]})")
    placement = parse_placement(done.stdout)
    compiled = out_dir / f"{tflite.stem}_vela.tflite"
    summaries = sorted(out_dir.glob(f"{tflite.stem}_summary_*.csv"))
    if not compiled.exists() or not summaries:
        raise CheckFailed(f"Vela wrote no compiled model for {tflite.name} ({config})")
    if placement["cpu_ops"] and not allow_cpu_fallback:
        raise CheckFailed(f"{placement['cpu_ops']} op(s) cannot run on the {config} NPU and would stay on the "
                          f"CPU: {describe_unsupported(placement)} (pass --allow-cpu-fallback to accept that)")
    return {"compile_seconds": round(seconds, 3), "vela_version": version, "accelerator_config": config,
            "compiled": compiled, "summary_csv": summaries[0], "placement": placement,
            "estimate": read_summary(summaries[0])}


def _default_ini() -> str:
    """Arm's ``vela.ini`` shipped inside the ``ethosu`` package. ``ethosu`` is a namespace package
    (no ``__init__.py``: ``__file__`` is None), so the file is found through its ``__path__``."""
    try:
        import ethosu
    except ImportError:
        raise DeviceUnavailable(f"Ethos-U targets need Vela: pip install '{VELA_EXTRA}'") from None
    for root in getattr(ethosu, "__path__", []):
        ini = Path(root) / "config_files" / "Arm" / "vela.ini"
        if ini.is_file():
            return str(ini)
    raise DeviceUnavailable(f"Vela's config_files/Arm/vela.ini is missing from the ethosu package; "
                            f"reinstall it: pip install '{VELA_EXTRA}'")


# Arm's pairs per NPU family (Vela's docs): used for the one of --system-config / --memory-mode not given,
# since Vela takes both from vela.ini or neither.
FAMILY_DEFAULTS = {"ethos-u55": ("Ethos_U55_High_End_Embedded", "Shared_Sram"),
                   "ethos-u65": ("Ethos_U65_High_End", "Dedicated_Sram"),
                   "ethos-u85": ("Ethos_U85_SYS_DRAM_Mid", "Dedicated_Sram")}
_KINDS = {"System_Config": "system_config", "Memory_Mode": "memory_mode"}


def _read_ini():
    import configparser

    parser = configparser.ConfigParser()
    parser.read(_default_ini())
    return parser


def ini_choices() -> dict[str, tuple[str, ...]]:
    """``{"system_config": names, "memory_mode": names}``: the sections of Arm's ``vela.ini``, what
    ``--system-config`` / ``--memory-mode`` may name."""
    found: dict[str, list[str]] = {"system_config": [], "memory_mode": []}
    for section in _read_ini().sections():
        kind, _, name = section.partition(".")
        if kind in _KINDS and name:
            found[_KINDS[kind]].append(name)
    return {key: tuple(names) for key, names in found.items()}


def _setting(parser, section: str, key: str) -> str | None:
    while parser.has_section(section):  # follow Vela's ``inherit=``
        if parser.has_option(section, key):
            return parser.get(section, key)
        section = parser.get(section, "inherit", fallback="")
    return None


def _arena_port(parser, system_config: str, memory_mode: str) -> str | None:
    """What the system config wires the memory mode's tensor-arena port to, when Vela refuses it (not
    SRAM or DRAM: flash); None when the pair is fine."""
    arena = (_setting(parser, f"Memory_Mode.{memory_mode}", "arena_mem_area") or "").lower()
    port = _setting(parser, f"System_Config.{system_config}", f"{arena}_port") if arena else None
    return port if port and port.lower() not in ("sram", "dram") else None


def resolve_options(config: str, system_config: str | None, memory_mode: str | None) -> tuple[str | None, str | None]:
    """(system config, memory mode) Vela compiles ``config`` with: both None (Vela's internal defaults)
    or both named, the missing one Arm's for that NPU family. A name vela.ini does not define, or a pair
    Vela refuses (a memory mode whose arena lives on a port the system config wires to flash), is one
    UsageError line, before TensorFlow loads (Vela itself would fail after the conversion)."""
    if not system_config and not memory_mode:
        return None, None
    choices = ini_choices()
    for option, key, value in (("--system-config", "system_config", system_config),
                               ("--memory-mode", "memory_mode", memory_mode)):
        if value and value not in choices[key]:
            raise UsageError(f"unknown {option} {value!r}; Vela's vela.ini defines: {', '.join(choices[key])}")
    family = FAMILY_DEFAULTS.get(config.rsplit("-", 1)[0], FAMILY_DEFAULTS["ethos-u55"])
    parser = _read_ini()
    if not memory_mode:  # the family's, unless this system config wires its arena port to flash
        memory_mode = family[1] if _arena_port(parser, system_config, family[1]) is None else "Shared_Sram"
    system_config = system_config or family[0]
    port = _arena_port(parser, system_config, memory_mode)
    if port:
        arena = _setting(parser, f"Memory_Mode.{memory_mode}", "arena_mem_area").lower()
        raise UsageError(f"--memory-mode {memory_mode} puts the tensor arena on {arena.upper()}, which "
                         f"--system-config {system_config} wires to {port}; Vela needs SRAM or DRAM there "
                         f"(choose Sram_Only or Shared_Sram, or a system config with DRAM)")
    return system_config, memory_mode


def parse_placement(stdout: str) -> dict[str, Any]:
    counts = {"CPU": 0, "NPU": 0}
    listed: dict[str, list[dict[str, str]]] = {"CPU": [], "NPU": []}
    unsupported: list[dict[str, str]] = []
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if match := _OPS.match(line.strip()):
            counts[match.group(1)] = int(match.group(2))
        elif match := _PLACED.match(line):
            listed[match.group(1)].append({"op_type": match.group(2), "name": match.group(3)})
        elif match := _UNSUPPORTED.match(line):
            reason = lines[i + 1].strip(" -").removeprefix("Reason: ") if i + 1 < len(lines) else ""
            op_type, name = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
            unsupported.append({"op_type": op_type, "name": name, "reason": reason})
    return {"npu_ops": counts["NPU"], "cpu_ops": counts["CPU"], "total_ops": counts["NPU"] + counts["CPU"],
            "cpu": unsupported or listed["CPU"]}


def describe_unsupported(placement: dict[str, Any], limit: int = 5) -> str:
    ops = placement["cpu"]
    if not ops:
        return "(Vela named none)"
    text = "; ".join(f"{op['op_type']} '{op['name'][:80]}'" + (f" ({op['reason']})" if op.get("reason") else "")
                     for op in ops[:limit])
    return text + (f" and {len(ops) - limit} more" if len(ops) > limit else "")


def read_summary(path: Path) -> dict[str, Any]:
    """The figures of Vela's summary CSV, as numbers where they are numbers, plus the ones people read:
    ``inference_ms`` and SRAM/flash in KiB (Vela's own ``*_memory_used`` are KiB)."""
    with open(path, newline="") as handle:
        row = next(csv.DictReader(handle))
    values: dict[str, Any] = {}
    for key in SUMMARY_FIELDS:
        values[key] = _number(row.get(key))
    values["inference_ms"] = float(row["inference_time"]) * 1e3
    values["core_clock_mhz"] = float(row["core_clock"]) / 1e6
    values["sram_kib"] = float(row["sram_memory_used"])
    values["flash_kib"] = float(row["off_chip_flash_memory_used"]) + float(row["on_chip_flash_memory_used"])
    values["dram_kib"] = float(row["dram_memory_used"])
    return values


def _number(raw: str | None) -> Any:
    for kind in (int, float):
        try:
            return kind(raw)
        except (TypeError, ValueError):
            pass
    return raw


def reference_kernel_outputs(tflite: Path, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 outputs with LiteRT's reference kernels, int8 outputs with its default optimized kernels)
    for float inputs quantized with the model's own input parameters; batch 1, as the NPU runs."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    results = []
    for resolver in (OpResolverType.BUILTIN_REF, OpResolverType.AUTO):
        interpreter = Interpreter(model_path=str(tflite), experimental_op_resolver_type=resolver, num_threads=1)
        interpreter.allocate_tensors()
        detail_in, detail_out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        scale, zero = detail_in["quantization"]
        outputs = []
        for image in inputs:
            q = np.clip(np.round(image[None] / scale + zero), -128, 127).astype(np.int8)
            interpreter.set_tensor(detail_in["index"], q)
            interpreter.invoke()
            outputs.append(interpreter.get_tensor(detail_out["index"])[0].copy())
        results.append(np.stack(outputs))
    return results[0], results[1]


def output_quantization(tflite: Path) -> tuple[float, int]:
    from ai_edge_litert.interpreter import Interpreter

    scale, zero = Interpreter(model_path=str(tflite)).get_output_details()[0]["quantization"]
    return float(scale), int(zero)


def dequantize(values: np.ndarray, scale: float, zero: int) -> np.ndarray:
    return (values.astype(np.float32) - zero) * scale


__all__ = ["resolve_options", "convert_int8_io", "compile", "ini_choices", "read_summary", "reference_kernel_outputs", "parse_placement",
           "VELA_EXTRA"]
