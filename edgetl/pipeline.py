"""`edgetl run`: the whole road in one command — fine-tune, export (FP32 and INT8 of each format),
bench against the reference, print the Markdown summary.

Each stage writes its own sub-directory of ``out`` with a ``stage.json`` holding the fingerprint of
its inputs (data content, upstream model hash, options) and the sha256 of every file it wrote. A rerun
with the same fingerprint reuses the finished stage only when those files are all still there and
intact (otherwise it says which is not and redoes the stage); ``force`` redoes everything. Stages are
written atomically, so an interrupted run resumes at the first unfinished stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import zoo
from .console import say
from .data import ImageSet, load_splits, sample_dataset
from .errors import CheckFailed, UsageError
from .metadata import (OUTPUT_MARKER, atomic_directory, check_output_dir, output_marker, read_json, read_model_card,
                       sha256_file, write_json)

STAGE_FILE = "stage.json"


@dataclass
class RunConfig:
    out: Path
    data: Path | None = None  # None: the embedded ant/bee sample
    backbone: str = zoo.DEFAULT_BACKBONE
    weights: str = "imagenet"
    strategy: str = "features"
    epochs: int = 5
    batch_size: int = 16
    lr: float = 1e-3
    input_size: int | None = None
    val_split: float = 0.2
    seed: int = 0
    formats: tuple[str, ...] = ("onnx", "tflite", "openvino")
    quantize: tuple[str, ...] = ("int8",)  # modes exported besides fp32
    target: str = "cpu"
    runs: int = 30
    force: bool = False
    verbose: bool = True


@dataclass
class RunResult:
    out: Path
    stages: dict[str, Path] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)
    summary: str = ""
    seconds: float = 0.0


def _key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _stage(name: str, directory: Path, key: str, config: RunConfig, result: RunResult,
           build: Callable[[Path], None]) -> Path:
    """Run ``build(directory)`` unless it already holds a finished stage with this key.

    ``build`` writes ``directory`` atomically (every library stage does); the marker is written last,
    so a stage interrupted midway has no marker and is redone.
    """
    marker = directory / STAGE_FILE
    record = _read_record(marker)
    problem = None if config.force or record.get("key") != key else _damage(directory, record)
    if not config.force and record.get("key") == key and problem is None:
        say(f"== {name}: inputs unchanged, reusing {directory}", config.verbose)
        result.reused.append(name)
    else:
        why = (f": inputs unchanged but {problem}; redoing it" if problem
               else ": inputs changed" if record.get("key") and not config.force else "")
        say(f"== {name}{why}", config.verbose)
        started = time.perf_counter()
        build(directory)
        write_json(marker, {"stage": name, "key": key, "seconds": round(time.perf_counter() - started, 2),
                            "outputs": _outputs(directory)})
    result.stages[name] = directory
    return directory


def _read_record(marker: Path) -> dict[str, Any]:
    try:
        record = read_json(marker)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _outputs(directory: Path) -> dict[str, str]:
    """sha256 of every file a stage wrote, by path relative to its directory."""
    return {str(p.relative_to(directory)): sha256_file(p) for p in sorted(directory.rglob("*"))
            if p.is_file() and p.relative_to(directory).as_posix() not in (STAGE_FILE, OUTPUT_MARKER)}


def _damage(directory: Path, record: dict[str, Any]) -> str | None:
    """Why a finished stage cannot be reused (a recorded output missing or changed), or None."""
    outputs = record.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        return "its stage.json records no outputs (written by an older edgetl)"
    for name, digest in outputs.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != digest:
            return f"{name} changed since it was written"
    return None


def stage_finished(directory: Path, key: str) -> bool:
    """Whether ``directory`` holds a finished stage with this key whose outputs are intact: what
    ``_stage`` would reuse (`edgetl search` asks before it sends a stage to a Ray worker)."""
    record = _read_record(Path(directory) / STAGE_FILE)
    return record.get("key") == key and _damage(Path(directory), record) is None


def _outputs_key(directory: Path) -> str:
    return _key(_read_record(directory / STAGE_FILE).get("outputs") or {})


def _materialise(images: ImageSet, dst: Path) -> None:
    """Copy (hard-link where possible) a split into ``dst/<class>/`` so later stages take a folder."""
    for path, label in zip(images.paths, images.labels):
        target = dst / images.classes[label] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def run(config: RunConfig) -> RunResult:
    from .benchmark import BenchConfig, bench
    from .exporting import ExportConfig, export
    from .training import FinetuneConfig, finetune

    started = time.perf_counter()
    out = Path(config.out)
    data = Path(config.data) if config.data else sample_dataset()
    zoo.get(config.backbone)
    # Before any work: the run folder and every stage folder must be edgetl's (or new), none an input.
    stage_dirs = [out / name for name in ("data", "model", "export", "bench")]
    for directory in (out, *stage_dirs):
        check_output_dir(directory, inputs=(data,))
    out.mkdir(parents=True, exist_ok=True)
    if not (out / OUTPUT_MARKER).exists():
        write_json(out / OUTPUT_MARKER, output_marker("run"))
    result = RunResult(out)

    # 1. Splits, materialised as folders: calibration uses train, the bench uses val.
    train, val = load_splits(data, config.val_split, config.seed)
    if not len(val):
        raise UsageError("the validation split is empty; raise --val-split or add images")
    split_key = _key({"train": train.fingerprint()["fingerprint"], "val": val.fingerprint()["fingerprint"],
                      "classes": train.classes})

    def write_splits(directory: Path) -> None:
        with atomic_directory(directory, inputs=(data,), verb="run") as tmp:
            _materialise(train, tmp / "train")
            _materialise(val, tmp / "val")

    splits = _stage("splits", out / "data", split_key, config, result, write_splits)

    # 2. Fine-tune: DATA/{train,val} is taken as given, so val stays held out for export and bench.
    ft_options = dict(backbone=config.backbone, weights=config.weights, strategy=config.strategy,
                      epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                      input_size=config.input_size, seed=config.seed)
    model_dir = _stage("finetune", out / "model", _key({"splits": split_key, **ft_options}), config, result,
                       lambda d: finetune(FinetuneConfig(data=splits, out=d, verbose=config.verbose,
                                                         **ft_options)))
    model_sha = read_model_card(model_dir).model_sha256

    # 3. Export FP32 and each quantized mode of every format (calibrated on train, checked on val).
    #    An INT8 artifact under the agreement threshold is written and marked failing; the run goes on
    #    so the bench shows by how much, rather than stopping with no report.
    modes = ("fp32", *config.quantize)
    export_options = dict(formats=tuple(config.formats), modes=modes)

    def do_export(directory: Path) -> None:
        try:
            export(ExportConfig(model=model_dir, out=directory, calib=splits / "train", check=splits / "val",
                                overwrite=True, verbose=config.verbose, **export_options))
        except CheckFailed as failure:
            say(f"warning: {failure}", config.verbose)

    export_dir = _stage("export", out / "export", _key({"model": model_sha, **export_options}), config, result,
                        do_export)

    # 4. Bench every artifact against the reference on the held-out split.
    bench_key = _key({"model": model_sha, "export": read_json(export_dir / STAGE_FILE)["key"],
                      "artifacts": _outputs_key(export_dir), "target": config.target, "runs": config.runs})
    _stage("bench", out / "bench", bench_key, config, result,
           lambda d: bench(BenchConfig(artifacts=[export_dir], target=config.target, data=splits / "val",
                                       reference=model_dir, runs=config.runs, batch_sizes=(1,), out=d,
                                       overwrite=True)))
    from .report import summary_markdown

    result.summary = (summary_markdown(read_json(out / "bench" / "bench.json"))
                      + f"\n\nfull report: {out / 'bench' / 'report.md'} (and report.html beside it)")
    result.seconds = time.perf_counter() - started
    return result

