"""`edgetl run`: the whole road in one command — fine-tune, export (FP32 and INT8 of each format),
bench against the reference, print the Markdown summary.

Each stage writes its own sub-directory of ``out`` with a ``stage.json`` holding the fingerprint of
its inputs (data content, upstream model hash, options) and the sha256 of every file it wrote. A rerun
with the same fingerprint reuses the finished stage only when those files are all still there and
intact (otherwise it says which is not and redoes the stage); ``force`` redoes everything. Stages are
written atomically, so an interrupted run resumes at the first unfinished stage (``edgetl.stages``,
which `edgetl search` shares).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from . import zoo
from .console import say
from .data import load_splits, sample_dataset
from .errors import CheckFailed, UsageError
from .metadata import (OUTPUT_MARKER, atomic_directory, check_output_dir, output_marker, read_json, read_model_card,
                       write_json)
from .stages import STAGE_FILE, content_key, materialise_split, outputs_key, reuse_or_build


@dataclass
class RunConfig:
    out: Path
    data: Path | None = None  # None: the embedded ant/bee sample
    backbone: str = zoo.DEFAULT_BACKBONE
    weights: str = "imagenet"
    strategy: str = "freeze"  # FinetuneConfig's default (tests/test_finetune.py keeps them equal)
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


def _stage(name: str, directory: Path, key: str, config: RunConfig, result: RunResult,
           build: Callable[[Path], None]) -> Path:
    """``stages.reuse_or_build`` with the run's ``--force`` and verbosity, recorded in ``result``."""
    if reuse_or_build(name, directory, key, build, force=config.force, verbose=config.verbose):
        result.reused.append(name)
    result.stages[name] = directory
    return directory


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
    split_key = content_key({"train": train.fingerprint()["fingerprint"], "val": val.fingerprint()["fingerprint"],
                             "classes": train.classes})

    def write_splits(directory: Path) -> None:
        with atomic_directory(directory, inputs=(data,), verb="run") as tmp:
            materialise_split(train, tmp / "train")
            materialise_split(val, tmp / "val")

    splits = _stage("splits", out / "data", split_key, config, result, write_splits)

    # 2. Fine-tune: DATA/{train,val} is taken as given, so val stays held out for export and bench.
    ft_options = dict(backbone=config.backbone, weights=config.weights, strategy=config.strategy,
                      epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                      input_size=config.input_size, seed=config.seed)
    # Keyed on the whole training recipe, defaults included (unfreeze_top, second-phase epochs and rate...),
    # so a changed default retrains instead of reusing a model made by the old one.
    training = FinetuneConfig(data=splits, out=out, **ft_options)
    recipe = {k: v for k, v in asdict(training).items() if k not in ("data", "out", "verbose")}
    recipe["second_phase"] = training.second_phase(training.strategy)  # the layer count that None resolves to
    model_dir = _stage("finetune", out / "model", content_key({"splits": split_key, **recipe}), config, result,
                       lambda d: finetune(replace(training, out=d, verbose=config.verbose)))
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

    export_dir = _stage("export", out / "export", content_key({"model": model_sha, **export_options}), config, result,
                        do_export)

    # 4. Bench every artifact against the reference on the held-out split.
    bench_key = content_key({"model": model_sha, "export": read_json(export_dir / STAGE_FILE)["key"],
                             "artifacts": outputs_key(export_dir), "target": config.target, "runs": config.runs})
    _stage("bench", out / "bench", bench_key, config, result,
           lambda d: bench(BenchConfig(artifacts=[export_dir], target=config.target, data=splits / "val",
                                       reference=model_dir, runs=config.runs, batch_sizes=(1,), out=d,
                                       overwrite=True)))
    from .report import summary_markdown

    result.summary = (summary_markdown(read_json(out / "bench" / "bench.json"))
                      + f"\n\nfull report: {out / 'bench' / 'report.md'} (and report.html beside it)")
    result.seconds = time.perf_counter() - started
    return result

