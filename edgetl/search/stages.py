"""The four stages of a search trial, as content-addressed `edgetl run` stages run by Ray workers.

fine-tune (per backbone x strategy) -> prune (per sparsity > 0) -> export (per format x quantization)
-> bench (per target). Each stage lands in ``<out>/stages/<kind>/<key>/`` through
``edgetl.pipeline._stage`` with the same keys `edgetl run` uses (inputs' fingerprints, upstream model
hash, options), so one fine-tuned model feeds all of its prune / quantize children, two trials never
build the same stage twice, and a rerun reuses every finished, intact stage. ``--out`` must be on a
file system every node of the cluster sees at the same path (one machine, or NFS).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckFailed, UsageError
from ..metadata import MODEL_METADATA, read_json, write_json
from ..pipeline import STAGE_FILE, RunConfig, RunResult, _key, _outputs_key, _stage, stage_finished

NODE_FILE = "node.json"  # which Ray node built the stage, and its size in parameters for models
KINDS = ("finetune", "prune", "export", "bench")


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
    key = _key({"splits": split_key, **options})
    return StageJob("finetune", key, stage_dir(out, "finetune", key), {"splits": str(splits), "options": options},
                    label, num_gpus=num_gpus)


def prune_job(out: Path, model_dir: Path, options: dict[str, Any], label: str, num_gpus: float) -> StageJob:
    key = _key({"model": read_json(Path(model_dir) / MODEL_METADATA)["model_sha256"], "prune": options})
    return StageJob("prune", key, stage_dir(out, "prune", key), {"model": str(model_dir), "options": options},
                    label, num_gpus=num_gpus)


def export_job(out: Path, model_dir: Path, splits: Path, fmt: str, mode: str, label: str) -> StageJob:
    options = dict(formats=(fmt,), modes=(mode,))
    key = _key({"model": read_json(Path(model_dir) / MODEL_METADATA)["model_sha256"], **options})
    return StageJob("export", key, stage_dir(out, "export", key),
                    {"model": str(model_dir), "splits": str(splits), "format": fmt, "mode": mode}, label)


def bench_job(out: Path, model_dir: Path, export: StageJob, splits: Path, target: str, runs: int,
              label: str, num_cpus: float = 1, threads: int | None = None) -> StageJob:
    key = _key({"model": read_json(Path(model_dir) / MODEL_METADATA)["model_sha256"], "export": export.key,
                "artifacts": _outputs_key(export.directory), "target": target, "runs": runs,
                **({"threads": threads} if threads else {})})
    return StageJob("bench", key, stage_dir(out, "bench", key),
                    {"model": str(model_dir), "export": str(export.directory), "splits": str(splits),
                     "target": target, "runs": runs, "threads": threads}, label,
                    resources={target_resource(target): 1}, num_cpus=num_cpus)


def target_resource(target: str) -> str:
    """The Ray custom resource a node offers for a bench target (``ray start --resources``)."""
    return f"target:{target}"


# -- what runs on a worker --------------------------------------------------------------------------
def run_stage(kind: str, key: str, directory: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Build (or reuse) one stage on this worker; the Ray task body. Errors propagate to the driver,
    which records them as the failure of every trial depending on this stage."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    started = time.perf_counter()
    result = RunResult(Path(directory))
    build = _BUILDERS[kind]
    _stage(kind, Path(directory), key, RunConfig(out=Path(directory), verbose=False), result,
           lambda d: _built(d, node, build(Path(d), spec)))
    return {"node": node, "reused": kind in result.reused, "seconds": round(time.perf_counter() - started, 2)}


def _built(directory: Path, node: str, params: int | None) -> None:
    # Written before _stage records the outputs, so it is hashed with them.
    write_json(directory / NODE_FILE, {"node": node, "host": socket.gethostname(), "params": params})


def _tensorflow() -> None:
    from ..cli import _load_tensorflow, _quiet_frameworks

    _quiet_frameworks()
    _load_tensorflow()


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
    from ..exporting import ExportConfig, export

    splits = Path(spec["splits"])
    config = ExportConfig(model=Path(spec["model"]), out=directory, formats=(spec["format"],),
                          modes=(spec["mode"],), calib=splits / "train", check=splits / "val", verbose=False)
    config.validate()
    _tensorflow()
    try:
        export(config)
    except CheckFailed:
        pass  # an artifact under the agreement threshold is written and marked; the bench measures it


def _bench(directory: Path, spec: dict[str, Any]) -> None:
    from ..benchmark import TARGETS, BenchConfig, bench

    if spec["target"] not in TARGETS:
        raise UsageError(f"target {spec['target']!r} cannot be benched by this edgetl (bench targets: "
                         f"{', '.join(TARGETS)})")
    _tensorflow()  # the FP32 Keras reference
    bench(BenchConfig(artifacts=[Path(spec["export"])], data=Path(spec["splits"]) / "val", out=directory,
                      target=spec["target"], reference=Path(spec["model"]), runs=spec["runs"], threads=spec.get("threads"),
                      batch_sizes=(1,), overwrite=True, measure_overhead=False))


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
        from ..exporting import EXTENSIONS
        from ..metadata import read_sidecar

        artifact = next(p for p in sorted(directory.iterdir()) if p.suffix in EXTENSIONS.values())
        sidecar = read_sidecar(artifact)
        return {**info, "artifact": str(artifact), "parity": sidecar.get("parity"),
                "size_bytes": sidecar.get("size_bytes")}
    report = read_json(directory / "bench.json")
    row = next(r for r in report["rows"] if r["kind"] == "artifact")
    reference = next((r for r in report["rows"] if r["kind"] == "reference"), {})
    return {**info, "top1": row["top1"], "latency_p50_ms": row["latency_p50_ms"],
            "latency_p90_ms": row["latency_p90_ms"], "size_bytes": row["size_bytes"],
            "agreement": row["agreement"], "device": row["device"], "reference_top1": reference.get("top1"),
            "n_images": report["data"]["n_images"]}
