"""NPU targets on a fine-tuned model: QNN HTP (simulated) and Ethos-U (Vela estimate + reference kernels).
Writes tools/RESULTS-targets.json; tools/RESULTS-targets.md is written from it by hand.

    PYTHONPATH=.:.site .venv/bin/python tools/bench_targets.py MODEL_DIR --calib ../shared/data/hymenoptera/train

* QNN: ``edgetl export --target npu:qnn-htp`` once per quantization scheme (QNN_SCHEMES), plus edgetl's
  CPU quantizer (``export.onnx.quantize_int8``: U8S8 per-channel, symmetric weights) on the same static
  graph; every model compiled to an EPContext model for the default SoC and run on the HTP simulator on
  the model's val split (agreement with Keras FP32: simulated). Then the default scheme compiled for
  several SoCs (compile time, size, whether outputs differ).
* Ethos-U: ``edgetl export --target npu:ethos-u55-256`` (int8 I/O TFLite + Vela), then the same int8
  model compiled for every Vela accelerator config at Vela's default system config for it (estimated).
* ``edgetl bench --target ... --simulate`` on the val split for the default QNN model and three Vela configs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402


def val_folder(model_dir: Path, out: Path) -> Path:
    """The model's val split as a class-folder tree of symlinks, for the bench."""
    meta = json.loads((model_dir / "edgetl.json").read_text())
    root = Path(meta["dataset"]["root"])
    for rel in meta["dataset"]["val"]["files"]:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            dst.symlink_to(root / rel)
    return out


def qnn_variants(args, work: Path) -> dict:
    from edgetl.exporting import ExportConfig, export, qnn
    from edgetl.exporting.backends import onnx as onnx_export
    from edgetl.exporting.calibration import load_calibration
    from edgetl.exporting.parity import compare, run_batches
    from edgetl.runtime.backends import open_backend

    rows = dict((args.previous.get("qnn") or {}).get("schemes") or {}) if "qnn-schemes" in args.skip else {}
    for scheme in [] if "qnn-schemes" in args.skip else qnn.QNN_SCHEMES:
        out = work / f"qnn_{scheme}"
        started = time.perf_counter()
        result = export(ExportConfig(model=args.model, out=out, calib=args.calib, calib_size=args.calib_size,
                                     target="npu:qnn-htp", qnn_scheme=scheme, verbose=False, min_agreement=0.5))
        total = time.perf_counter() - started
        qdq, ctx = result.artifacts
        rows[scheme] = {"export_seconds": round(total, 1), "qdq_bytes": qdq.size_bytes, "ctx_bytes": ctx.size_bytes,
                        "compile_seconds": ctx.sidecar["target"]["compile_seconds"],
                        "nodes": ctx.sidecar["target"]["nodes"],
                        "simulated": _parity(ctx.parity), "cpu_ep": _parity(qdq.parity),
                        "simulator_wall_ms_per_image": ctx.sidecar["target"]["simulator_wall_ms_per_image"]}
        print(scheme, json.dumps(rows[scheme]), flush=True)

    # edgetl's CPU quantizer (U8S8 per-channel QDQ from quant_pre_process + quantize_static) on the same
    # static graph, compiled and simulated the same way.
    base = work / f"qnn_{qnn.DEFAULT_SCHEME}"
    sidecar = json.loads((base / "model_qnn_int8.onnx.json").read_text())
    from edgetl.exporting.keras_graph import load_source, output_model
    from edgetl.exporting import ExportConfig as EC
    from edgetl.exporting.parity import keras_reference, parity_images

    source = load_source(args.model)
    calib = load_calibration(args.calib, source.recipe, args.calib_size)
    config = EC(model=args.model, out=work / "unused", calib=args.calib)
    checks = parity_images(config, source, calib)
    reference = keras_reference(source, checks)
    fp32 = work / "fp32.onnx"
    onnx_export.convert(output_model(source), fp32, "float32")
    cache = work / "ranges.json"
    # ranges and QDQ on the dynamic-batch graph (edgetl's calibration feeds chunks), then batch fixed to 1
    dynamic_pre, dynamic_qdq = work / "pre_dynamic.onnx", work / "edgetl_u8s8_dynamic.onnx"
    onnx_export.preprocess(fp32, dynamic_pre)
    onnx_export.calibrate(dynamic_pre, calib, "float32", "minmax", cache)
    onnx_export.quantize_int8(dynamic_pre, dynamic_qdq, cache, "minmax")
    edgetl_qdq = work / "edgetl_u8s8.onnx"
    qnn.fix_batch(dynamic_qdq, edgetl_qdq)
    compiled = qnn.compile_context(edgetl_qdq, work / "edgetl_u8s8_ctx.onnx", qnn.DEFAULT_SOC)
    inputs = source.recipe.normalize(checks.pixels)
    htp = open_backend(work / "edgetl_u8s8_ctx.onnx", "npu", soc=qnn.DEFAULT_SOC, simulate=True)
    outputs = run_batches(htp.run, inputs, 1)
    rows["edgetl quantize_int8 (u8s8 per-channel)"] = {
        "qdq_bytes": edgetl_qdq.stat().st_size, "ctx_bytes": (work / "edgetl_u8s8_ctx.onnx").stat().st_size,
        "compile_seconds": compiled["compile_seconds"], "nodes": compiled["nodes"],
        "simulated": _parity(compare(reference, outputs, "int8", 0.98, checks.labels))}
    print("edgetl", json.dumps(rows["edgetl quantize_int8 (u8s8 per-channel)"]), flush=True)

    socs = {}
    qdq = base / "model_qnn_int8.onnx"
    first = None
    for soc in ("SM8850", "SM8750", "SM8650", "SC8380XP", "QCS6490"):
        ctx_path = work / f"ctx_{soc}.onnx"
        try:
            info = qnn.compile_context(qdq, ctx_path, soc)
        except Exception as exc:  # an SoC this QNN build cannot compile for
            socs[soc] = {"error": str(exc)[:200]}
            continue
        backend = open_backend(ctx_path, "npu", soc=soc, simulate=True)
        out = run_batches(backend.run, inputs[:8], 1)
        first = out if first is None else first
        socs[soc] = {"name": info["soc_name"], "compile_seconds": info["compile_seconds"],
                     "ctx_bytes": ctx_path.stat().st_size, "max_abs_diff_vs_SM8850": float(np.abs(out - first).max())}
        print(soc, socs[soc], flush=True)
    return {"schemes": rows, "socs": socs, "default_scheme": qnn.DEFAULT_SCHEME, "default_soc": qnn.DEFAULT_SOC,
            "compared_on": sidecar["parity"]["compared_on"]}


def _parity(p: dict) -> dict:
    return {k: p.get(k) for k in ("top1_agreement", "cosine", "max_abs_diff", "accuracy", "reference_accuracy",
                                  "n_images", "vs_cpu_qdq_max_abs_diff") if p.get(k) is not None}


def ethos_u(args, work: Path) -> dict:
    from edgetl.exporting import ExportConfig, export, vela
    from edgetl.targets import ETHOS_U_CONFIGS

    out = work / "u55"
    started = time.perf_counter()
    result = export(ExportConfig(model=args.model, out=out, calib=args.calib, calib_size=args.calib_size,
                                 target="npu:ethos-u55-256", verbose=False))
    plain, compiled = result.artifacts
    summary = {"export_seconds": round(time.perf_counter() - started, 1), "int8_tflite_bytes": plain.size_bytes,
               "parity_reference_kernels": _parity(plain.parity),
               "reference_vs_optimized_kernels": plain.parity["reference_vs_optimized_kernels"], "configs": {}}
    for config in ETHOS_U_CONFIGS:
        info = vela.compile(out / "model_tflite_int8_io8.tflite", work / f"vela_{config}", config)
        estimate = info["estimate"]
        summary["configs"][config] = {
            "compile_seconds": info["compile_seconds"], "npu_ops": info["placement"]["npu_ops"],
            "cpu_ops": info["placement"]["cpu_ops"], "compiled_bytes": info["compiled"].stat().st_size,
            **{k: estimate[k] for k in ("system_config", "memory_mode", "core_clock_mhz", "inference_ms",
                                        "cycles_total", "cycles_npu", "sram_kib", "flash_kib", "dram_kib", "nn_macs")}}
        print(config, summary["configs"][config], flush=True)
    return summary


def benches(args, work: Path, val: Path) -> dict:
    from edgetl.targets.bench import TargetBenchConfig, bench_target
    from edgetl.exporting import ExportConfig, export

    found = {}
    from edgetl.exporting.qnn import DEFAULT_SCHEME

    for target, folder in (("npu:qnn-htp", work / f"qnn_{DEFAULT_SCHEME}"), ("npu:ethos-u55-256", work / "u55")):
        report = bench_target(TargetBenchConfig(artifacts=[folder], data=val, out=work / f"bench_{target[4:]}",
                                                target=target, simulate=True, runs=10, overwrite=True)).json
        found[target] = _bench_summary(report)
    for target in ("npu:ethos-u65-512", "npu:ethos-u85-256"):
        folder = work / target[4:]
        export(ExportConfig(model=args.model, out=folder, calib=args.calib, calib_size=args.calib_size, target=target,
                            verbose=False))
        report = bench_target(TargetBenchConfig(artifacts=[folder], data=val, out=work / f"bench_{target[4:]}",
                                                target=target, simulate=True, runs=10, overwrite=True)).json
        found[target] = _bench_summary(report)
        shutil.copy(work / f"bench_{target[4:]}" / "report.md", work / f"report_{target[4:]}.md")
    return found


def _bench_summary(report: dict) -> dict:
    [entry] = report["artifacts"]
    return {"artifact": entry["name"], "evidence": entry["evidence"], "top1": entry["accuracy"]["top1"],
            "agreement": (entry["vs_reference"] or {}).get("top1_agreement"),
            "cosine": (entry["vs_reference"] or {}).get("cosine_mean"),
            "reference_top1": (report["reference"] or {}).get("accuracy", {}).get("top1"),
            "placement": entry["placement"]["nodes"], "npu": entry["npu"], "recommendation": report["recommendation"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--calib-size", type=int, default=300)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "tools" / "RESULTS-targets.json")
    parser.add_argument("--skip", default="", help="comma-separated: qnn,ethos,bench")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    work = args.work or Path(tempfile.mkdtemp(prefix="edgetl-targets-"))
    work.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    args.previous, args.skip = dict(results), skip
    results["model"] = str(args.model)
    if "qnn" not in skip:  # "qnn-schemes": keep the scheme rows of a previous run
        results["qnn"] = qnn_variants(args, work)
        args.out.write_text(json.dumps(results, indent=2, default=str))
    if "ethos" not in skip:
        results["ethos_u"] = ethos_u(args, work)
        args.out.write_text(json.dumps(results, indent=2, default=str))
    if "bench" not in skip:
        results["bench"] = benches(args, work, val_folder(args.model, work / "val"))
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {args.out} (work files in {work})")


if __name__ == "__main__":
    main()
