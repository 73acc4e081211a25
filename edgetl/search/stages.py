"""The four stages of a search trial, as content-addressed `edgetl run` stages run by Ray workers.

fine-tune (per backbone x strategy) -> prune (per sparsity > 0) -> export (per format x quantization)
-> bench (per target). Each stage lands in ``<out>/stages/<kind>/<key>/`` through
``edgetl.stages.reuse_or_build`` with the same keys `edgetl run` uses (inputs' fingerprints, upstream model
hash, options), so one fine-tuned model feeds all of its prune / quantize children, two trials never
build the same stage twice, and a rerun reuses every finished, intact stage. ``--out`` must be on a
file system every node of the cluster sees at the same path (one machine, or NFS).

A registered target (``npu:qnn-htp``, ``npu:ethos-u55-128``, ``gpu:cuda``) is exported the way
``edgetl export --target NAME`` does it and benched the way ``edgetl bench --target NAME --simulate``
does: on its device where the node has one, else on the vendor's simulator (``simulated``) or with
its compiler's estimate (``estimated``), every figure keeping its evidence label. Both its export
(which needs the vendor compiler) and its bench request ``target:<name>``; a node without the device,
simulator or compiler fails the stage with ``DeviceUnavailable``'s one line.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..choices import TargetKind
from ..errors import CheckFailed, DeviceUnavailable, UsageError
from ..metadata import MODEL_METADATA, read_json, read_model_card, write_json
from ..stages import STAGE_FILE, content_key, outputs_key, reuse_or_build, stage_finished
from .space import registered

NODE_FILE = "node.json"  # which Ray node built the stage, and its size in parameters for models
KINDS = ("finetune", "prune", "export", "bench")
# What a search accepts for a registered target: its device, else its simulator or its compiler's estimate.
TARGET_LEVELS = ("hardware", "simulator", "estimator")
# A bench row's labels (bench.json: measured | simulated | estimated | not measured) and the target's level.
EVIDENCE_KEYS = ("latency_evidence", "accuracy_evidence", "target_level")
NPU_KEYS = ("npu_estimate", "simulator_wall_ms_per_image")  # labelled NPU extras, when the bench has them


@dataclass
class StageJob:
    """One stage to build (or reuse): where, under which key, with what, on which resources."""

    kind: str
    key: str
    directory: Path
    spec: dict[str, Any]
    label: str
    resources: dict[str, float] = field(default_factory=dict)  # Ray custom resources (target:<name>)
    num_gpus: float = 0
    num_cpus: float = 1

    def finished(self) -> bool:
        return stage_finished(self.directory, self.key)


def stage_dir(out: Path, kind: str, key: str) -> Path:
    return Path(out) / "stages" / kind / key[:16]


# -- keys (the same payloads as edgetl/pipeline.py's run, so the two share their formulas) ----------
def finetune_job(out: Path, splits: Path, split_key: str, options: dict[str, Any], label: str,
                 num_gpus: float) -> StageJob:
    key = content_key({"splits": split_key, **options})
    return StageJob("finetune", key, stage_dir(out, "finetune", key), {"splits": str(splits), "options": options},
                    label, num_gpus=num_gpus)


def prune_job(out: Path, model_dir: Path, options: dict[str, Any], label: str, num_gpus: float) -> StageJob:
    key = content_key({"model": read_model_card(model_dir).model_sha256, "prune": options})
    return StageJob("prune", key, stage_dir(out, "prune", key), {"model": str(model_dir), "options": options},
                    label, num_gpus=num_gpus)


def export_job(out: Path, model_dir: Path, splits: Path, fmt: str, mode: str, label: str,
               target: str = "cpu", foreign: dict[str, Any] | None = None) -> StageJob:
    options = dict(formats=(fmt,), modes=(mode,))
    named = registered(target)
    if named:  # keyed on the target too; cpu/gpu/npu exports keep `edgetl run`'s key
        options["target"] = target
    if foreign:  # search --model of a model without edgetl.json: its stated flags (search/given.py)
        options["foreign"] = foreign
    key = content_key({"model": model_hash(model_dir), **options})
    return StageJob("export", key, stage_dir(out, "export", key),
                    {"model": str(model_dir), "splits": str(splits), "format": fmt, "mode": mode,
                     "target": target if named else None, **({"foreign": foreign} if foreign else {})}, label,
                    resources={target_resource(target): 1} if named else {})


def bench_job(out: Path, model_dir: Path, export: StageJob, splits: Path, target: str, runs: int,
              label: str, num_cpus: float = 1, threads: int | None = None, anchor: StageJob | None = None) -> StageJob:
    """``anchor``: the export of the target's anchor trial, timed in the same rounds as this artifact
    so trials benched at different times or on different nodes compare by their latency relative to it."""
    anchor_artifact = str(_export_artifact(anchor.directory)) if anchor is not None else None
    key = content_key({"model": model_hash(model_dir), "export": export.key,
                       "artifacts": outputs_key(export.directory), "target": target, "runs": runs,
                       **({"threads": threads} if threads else {}),
                       **({"anchor": anchor.key, "anchor_artifacts": outputs_key(anchor.directory)} if anchor else {})})
    return StageJob("bench", key, stage_dir(out, "bench", key),
                    {"model": str(model_dir), "export": str(export.directory), "splits": str(splits),
                     "target": target, "runs": runs, "threads": threads, "anchor": anchor_artifact}, label,
                    resources={target_resource(target): 1}, num_cpus=num_cpus)


def model_hash(model: Path) -> str:
    """An edgetl model's own hash (the key `edgetl run` uses); a --model file's sha256 (search/given.py)."""
    from .given import model_hash as given_hash

    return given_hash(model)


def target_resource(target: str) -> str:
    """The Ray custom resource a node offers for a target (``ray start --resources``): every bench asks
    for its target's, and so does the export for a registered target."""
    return f"target:{target}"


def unavailable_targets(names) -> dict[str, str]:
    """``{target: one-line reason}`` for the registered targets this machine has no device, simulator
    or compiler for (the driver fails their trials at once when Ray runs in-process here)."""
    from .. import targets

    missing = {}
    for name in names:
        if registered(name):
            try:
                targets.check_available(targets.get(name), TARGET_LEVELS)
            except DeviceUnavailable as exc:
                missing[name] = f"target: {type(exc).__name__}: {exc}"
    return missing


# -- what runs on a worker --------------------------------------------------------------------------
def run_stage(kind: str, key: str, directory: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Build (or reuse) one stage on this worker; the Ray task body. Errors propagate to the driver,
    which records them as the failure of every trial depending on this stage."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    started = time.perf_counter()
    build = _BUILDERS[kind]
    reused = reuse_or_build(kind, Path(directory), key, lambda d: _built(d, node, build(Path(d), spec)),
                            verbose=False)
    return {"node": node, "reused": reused, "seconds": round(time.perf_counter() - started, 2)}


def _built(directory: Path, node: str, params: int | None) -> None:
    # Written before reuse_or_build records the outputs, so it is hashed with them.
    write_json(directory / NODE_FILE, {"node": node, "host": socket.gethostname(), "params": params})


def _tensorflow() -> None:
    from ..cli.frameworks import load_tensorflow, quiet_frameworks

    quiet_frameworks()
    load_tensorflow()


def _finetune(directory: Path, spec: dict[str, Any]) -> int:
    from ..training import FinetuneConfig, finetune

    config = FinetuneConfig(data=Path(spec["splits"]), out=directory, verbose=False, **spec["options"])
    config.validate()  # an unknown backbone fails here, before TensorFlow's start-up cost
    _tensorflow()
    return int(finetune(config).model.count_params())


def _prune(directory: Path, spec: dict[str, Any]) -> int:
    from ..pruning import PruneConfig, prune

    config = PruneConfig(model_dir=Path(spec["model"]), out=directory, verbose=False, **spec["options"])
    config.validate()
    _tensorflow()
    record = prune(config).record
    return int(record.get("nonzero_params_after") or record["params_after"])


def _export(directory: Path, spec: dict[str, Any]) -> None:
    from .. import targets
    from ..exporting import ExportConfig, export

    splits = Path(spec["splits"])
    name = spec.get("target")
    target = targets.get(name) if name else None
    if target is not None:  # this node must have the device, its simulator or its compiler
        targets.check_available(target, TARGET_LEVELS)
    via_target = target is not None and (target.compiled_ahead or target.kind == TargetKind.GPU)
    # npu:intel has no export --target: its NPU plugin compiles the ordinary OpenVINO export at load.
    config = ExportConfig(model=Path(spec["model"]), out=directory, formats=(spec["format"],),
                          modes=(spec["mode"],), calib=splits / "train", check=splits / "val", verbose=False,
                          target=name if via_target else None, **_foreign_options(spec))
    config.validate()
    if via_target:
        targets.preflight_export(config)  # what `edgetl export --target` checks before TensorFlow
    _tensorflow()
    try:
        export(config)
    except CheckFailed:
        pass  # an artifact under the agreement threshold is written and marked; the bench measures it


def _foreign_options(spec: dict[str, Any]) -> dict[str, Any]:
    from .given import export_options

    return export_options(spec["foreign"]) if spec.get("foreign") else {}


def _reference(spec: dict[str, Any]) -> Path | None:
    from .given import bench_reference

    return bench_reference(Path(spec["model"]))


def _bench(directory: Path, spec: dict[str, Any]) -> None:
    from ..benchmark import TARGETS, BenchConfig, bench

    if registered(spec["target"]):
        return _bench_target(directory, spec)
    if spec["target"] not in TARGETS:
        raise UsageError(f"target {spec['target']!r} cannot be benched by this edgetl (bench targets: "
                         f"{', '.join(TARGETS)})")
    reference = _reference(spec)
    if reference is not None and reference.suffix != ".onnx":
        _tensorflow()  # the FP32 Keras reference (an .onnx one runs in ONNX Runtime)
    anchor = Path(spec["anchor"]) if spec.get("anchor") else None
    bench(BenchConfig(artifacts=[Path(spec["export"])], data=Path(spec["splits"]) / "val", out=directory,
                      target=spec["target"], reference=reference, runs=spec["runs"], threads=spec.get("threads"),
                      batch_sizes=(1,), overwrite=True, measure_overhead=False, anchor=anchor))


def _bench_target(directory: Path, spec: dict[str, Any]) -> None:
    """`edgetl bench --target NAME --simulate`: on the device if this node has it, else simulated/estimated."""
    from ..targets.bench import TargetBenchConfig, bench_target, preflight_target

    config = TargetBenchConfig(artifacts=[Path(spec["export"])], data=Path(spec["splits"]) / "val", out=directory,
                               target=spec["target"], reference=_reference(spec), simulate=True,
                               runs=spec["runs"], threads=spec.get("threads"), overwrite=True)
    if preflight_target(config):  # DeviceUnavailable (exit 3) before TensorFlow's start-up
        _tensorflow()
    bench_target(config)


_BUILDERS = {"finetune": _finetune, "prune": _prune, "export": _export, "bench": _bench}


# -- what the driver reads back from a finished stage ------------------------------------------------
def describe(job: StageJob) -> dict[str, Any]:
    """The numbers the driver needs from a finished stage, read from its folder (so a stage reused
    from an earlier run reads exactly like one just built)."""
    directory = job.directory
    node = read_json(directory / NODE_FILE)
    record = read_json(directory / STAGE_FILE)
    info = {"node": node.get("node"), "host": node.get("host"), "seconds": record.get("seconds"),
            "directory": str(directory)}
    if job.kind in ("finetune", "prune"):
        meta = read_json(directory / MODEL_METADATA)
        return {**info, "val_accuracy": (meta.get("metrics") or {}).get("val_accuracy"), "params": node["params"],
                "model_sha256": meta["model_sha256"]}
    if job.kind == "export":
        from ..metadata import read_sidecar

        artifact = _export_artifact(directory)
        sidecar = read_sidecar(artifact)
        return {**info, "artifact": str(artifact), "parity": sidecar.get("parity"),
                "size_bytes": sidecar.get("size_bytes"), "target": (sidecar.get("target") or {}).get("name")}
    report = read_json(directory / "bench.json")
    # This trial's own artifact (the anchor benched beside it has rows too)
    own = Path(job.spec["export"]).resolve()
    entry = next((a for a in report.get("artifacts") or [] if Path(a["path"]).resolve().parent == own),
                 (report.get("artifacts") or [{}])[0])
    row = next(r for r in report["rows"] if r["kind"] == "artifact" and r["artifact"] == entry.get("name", r["artifact"]))
    reference = next((r for r in report["rows"] if r["kind"] == "reference"), {})
    level = (report.get("target_info") or {}).get("level", "hardware")
    return {**info, "top1": row["top1"], "latency_p50_ms": row["latency_p50_ms"],
            "top1_low": row.get("top1_low"), "top1_high": row.get("top1_high"),
            "latency_vs_anchor": row.get("latency_vs_anchor"), "latency_vs_anchor_low": row.get("latency_vs_anchor_low"),
            "latency_vs_anchor_high": row.get("latency_vs_anchor_high"), "anchor": report.get("anchor"),
            "latency_p90_ms": row["latency_p90_ms"], "size_bytes": row["size_bytes"],
            "agreement": row["agreement"], "device": row["device"], "reference_top1": reference.get("top1"),
            "n_images": report["data"]["n_images"], "latency_evidence": row.get("latency_evidence"),
            "accuracy_evidence": row.get("accuracy_evidence"), "target_level": level,
            **_npu_figures(entry.get("npu") or {})}


def _export_artifact(directory: Path) -> Path:
    """The artifact an export stage made that the target runs: for a compiled NPU target the compiled
    one, not its source."""
    from ..exporting import EXTENSIONS
    from ..metadata import read_sidecar

    found = [(p, read_sidecar(p)) for p in sorted(Path(directory).iterdir()) if p.suffix in EXTENSIONS.values()]
    return next(p for p, s in found if "compiled" not in (s.get("target") or {}))


def _npu_figures(npu: dict[str, Any]) -> dict[str, Any]:
    """An NPU bench's labelled extras: Vela's estimate, or the HTP simulator's wall time (never latency)."""
    figures = {}
    estimate = npu.get("estimate") or {}
    if estimate:
        figures["npu_estimate"] = {k: estimate.get(k) for k in ("inference_ms", "sram_kib", "flash_kib",
                                                                 "cycles_total", "system_config")}
        figures["npu_estimate"]["evidence"] = estimate.get("evidence", "estimated")
    if npu.get("simulator_wall_ms_per_image"):
        figures["simulator_wall_ms_per_image"] = npu["simulator_wall_ms_per_image"]
    return figures
