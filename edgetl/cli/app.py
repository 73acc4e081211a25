"""The `edgetl` command line: a thin typer layer over the library API.

Each command parses options into a config dataclass, calls the library, prints the result. An
``EdgetlError`` becomes one line on stderr and its exit code (2 bad input, 1 failed check or
unusable artifact, 3 no device); a usage error of the parser is one line and exit 2 as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import EdgetlError
from . import given_model
from .frameworks import load_tensorflow
from .numbers import finite

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Fine-tune an ImageNet backbone and take it to an edge device: "
                       "finetune, export, prune, bench, predict, run, search.")


@app.callback()
def _global_options(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the converters' and runtimes' own "
                                 "stderr output (TensorFlow, TFLite converter, XNNPACK, NNCF), silenced by default."),
):
    from ..console import quiet_native_stderr

    ctx.with_resource(quiet_native_stderr(enabled=not verbose))


def _split(values: Optional[List[str]]) -> list[str]:
    """Accept both `--format onnx --format tflite` and `--format onnx,tflite`."""
    out: list[str] = []
    for value in values or []:
        out += [v.strip() for v in value.split(",") if v.strip()]
    return out


@app.command()
def finetune(
    data: Path = typer.Argument(..., help="Image folder: DATA/<class>/* or DATA/{train,val}/<class>/*."),
    out: Path = typer.Option(..., "--out", "-o", help="Output model directory (written atomically)."),
    backbone: str = typer.Option("efficientnet_lite0", help="Backbone name (see `edgetl backbones`)."),
    backbones: Optional[str] = typer.Option(None, help="Comma-separated backbones for --strategy stack."),
    weights: str = typer.Option("imagenet", help="imagenet | none | PATH to a .weights.h5 file."),
    strategy: str = typer.Option("freeze", help="features | freeze | full | stack | distill (--teacher)."),
    unfreeze_top: Optional[int] = typer.Option(None, help="Weighted backbone layers to unfreeze (strategy freeze: 40; a distill --student freeze: 20)."),
    epochs: int = typer.Option(5, help="Epochs of head training."),
    fine_tune_epochs: Optional[int] = typer.Option(None, help="Epochs of the second phase (freeze/full)."),
    batch_size: int = typer.Option(16),
    lr: float = typer.Option(1e-3, help="Learning rate of the head phase."),
    fine_tune_lr: Optional[float] = typer.Option(None, help="Second-phase rate (default lr/30 freeze, lr/100 full)."),
    dropout: float = typer.Option(0.2),
    val_split: float = typer.Option(0.2, help="Validation fraction when DATA is not pre-split."),
    seed: int = typer.Option(0),
    input_size: Optional[int] = typer.Option(None, help="Override the backbone's input size."),
    teacher: Optional[Path] = typer.Option(None, help="strategy distill: the teacher, any edgetl model directory (a stack too)."),
    temperature: float = typer.Option(2.0, help="strategy distill: softening temperature."),
    distill_weight: float = typer.Option(0.5, help="strategy distill: weight of the teacher term (the rest: labels)."),
    student: str = typer.Option("freeze", help="strategy distill: freeze (head, then the top --unfreeze-top layers) | features (head only)."),
    teacher_view: str = typer.Option("same", help="strategy distill: same (teacher sees each augmented view; pure KL) | fixed (teacher once per photo; KL + labels)."),
    mixup: float = typer.Option(1.0, help="strategy distill, --teacher-view same: mixup Beta(a, a) of the shared views (0 = off)."),
    frozen_views: int = typer.Option(2, help="Views per photo run once through the frozen backbone and cached for head epochs and freeze's second phase (0: every photo every epoch)."),
    label_smoothing: float = typer.Option(0.0, help="Label smoothing of the training loss."),
    weight_decay: float = typer.Option(0.0, help="> 0: AdamW with this weight decay."),
    patience: int = typer.Option(0, help="> 0: early stopping on val loss per phase, best epoch restored."),
):
    """Fine-tune a backbone with a new classification head on an image folder."""
    from ..training import FinetuneConfig

    config = FinetuneConfig(data=data, out=out, backbone=backbone,
                            backbones=tuple(_split([backbones])) if backbones else (), weights=weights,
                            strategy=strategy, unfreeze_top=unfreeze_top, epochs=epochs,
                            fine_tune_epochs=fine_tune_epochs, batch_size=batch_size, lr=lr,
                            fine_tune_lr=fine_tune_lr, dropout=dropout, val_split=val_split, seed=seed,
                            input_size=input_size, teacher=teacher, temperature=temperature,
                            distill_weight=distill_weight, student=student, teacher_view=teacher_view,
                            mixup=mixup, frozen_views=frozen_views, label_smoothing=label_smoothing,
                            weight_decay=weight_decay, patience=patience)
    config.validate()  # bad arguments, a forbidden or unwritable --out: before TensorFlow and training
    load_tensorflow()
    from ..training import finetune as run_finetune

    result = run_finetune(config)
    typer.echo(f"model: {result.model_dir}  val_accuracy: {result.val_accuracy}")


@app.command()
def run(
    data: Optional[Path] = typer.Argument(None, help="Image folder (default: the embedded ant/bee sample)."),
    out: Path = typer.Option(Path("runs/edgetl"), "--out", "-o", help="Output directory, one sub-directory per stage."),
    backbone: str = typer.Option("efficientnet_lite0", help="Backbone name (see `edgetl backbones`)."),
    weights: str = typer.Option("imagenet", help="imagenet | none | PATH."),
    strategy: str = typer.Option("freeze", help="features | freeze | full."),
    epochs: int = typer.Option(5),
    batch_size: int = typer.Option(16),
    input_size: Optional[int] = typer.Option(None, help="Override the backbone's input size."),
    formats: List[str] = typer.Option(["onnx,tflite,openvino"], "--formats", help="Comma-separated formats."),
    quantize: List[str] = typer.Option(["int8"], "--quantize", help="Quantized modes besides FP32."),
    target: str = typer.Option("cpu", help="cpu | gpu | npu."),
    runs: int = typer.Option(30, help="Timed runs per artifact in the bench."),
    force: bool = typer.Option(False, "--force", help="Redo every stage even when its inputs are unchanged."),
):
    """The whole road: fine-tune, export FP32 + INT8 of each format, bench, print the summary."""
    load_tensorflow()
    from ..pipeline import RunConfig
    from ..pipeline import run as run_pipeline

    config = RunConfig(out=out, data=data, backbone=backbone, weights=weights, strategy=strategy,
                       epochs=epochs, batch_size=batch_size, input_size=input_size,
                       formats=tuple(_split(formats)), quantize=tuple(q for q in _split(quantize) if q not in ("none", "fp32")),
                       target=target, runs=runs, force=force)
    result = run_pipeline(config)
    typer.echo(result.summary)
    reused = f" (reused: {', '.join(result.reused)})" if result.reused else ""
    typer.echo(f"\nall stages in {result.out} after {result.seconds:.0f} s{reused}")


@app.command()
def search(
    data: Path = typer.Argument(..., help="Image folder: DATA/<class>/* or DATA/{train,val}/<class>/*."),
    out: Path = typer.Option(..., "--out", "-o", help="Search folder: stages/, trials.json, pareto.json/.html, winner/."),
    target: List[str] = typer.Option(["cpu"], "--target", help="Bench target(s); each maps to the Ray resource target:<name>."),
    backbones: str = typer.Option("efficientnet_lite0", help="Comma-separated backbones."),
    strategies: str = typer.Option("features", help="Comma-separated: features, freeze, full."),
    sparsity: str = typer.Option("0", help="Comma-separated sparsities in [0, 1) (0: unpruned)."),
    quantize: str = typer.Option("fp32,int8", help="Comma-separated: fp32, fp16, dynamic, int8."),
    formats: str = typer.Option("onnx", help="Comma-separated: onnx, tflite, openvino."),
    epochs: int = typer.Option(5, help="Fine-tune epochs (also recovery epochs after pruning unless --prune-epochs)."),
    prune_epochs: Optional[int] = typer.Option(None, help="Recovery epochs after pruning."),
    prune_method: str = typer.Option("structured", help="structured (removes channels) | magnitude (zeros)."),
    prune_loss: Optional[str] = typer.Option(None, help="Recovery loss: labels | distill (from the unpruned model) | features (its pooled features)."),
    prune_patience: Optional[int] = typer.Option(None, help="Recovery: stop after this many epochs without a lower val loss, keep the best."),
    weights: str = typer.Option("imagenet", help="imagenet | none | PATH."),
    input_size: Optional[int] = typer.Option(None, help="Override the backbones' input size."),
    input_sizes: Optional[str] = typer.Option(None, help="Comma-separated input sizes to search (e.g. 224,176): fine-tune and export at each."),
    batch_size: int = typer.Option(16),
    seed: int = typer.Option(0),
    runs: int = typer.Option(30, help="Timed runs per artifact in each bench."),
    threads: Optional[int] = typer.Option(None, help="Runtime threads in each bench (default: each runtime's own)."),
    max_latency_ms: Optional[float] = typer.Option(None, help="Winner: p50 latency at batch 1 at most this."),
    max_size_mb: Optional[float] = typer.Option(None, help="Winner: artifact size at most this (MB = 10^6 bytes)."),
    max_drop: Optional[float] = typer.Option(None, help="Winner: top-1 at most this many points below the best FP32 fine-tuned model."),
    eta: int = typer.Option(2, help="Successive halving: keep the top 1/eta of each stage (plus every non-dominated branch); 1 keeps all."),
    space: Optional[Path] = typer.Option(None, help="JSON file overriding the axes and/or listing extra points."),
    address: Optional[str] = typer.Option(None, help="Join this Ray cluster (HOST:PORT); default: Ray started in-process here."),
    model: Optional[Path] = given_model.MODEL, preprocess: Optional[str] = given_model.PREPROCESS,
    mean: Optional[str] = given_model.MEAN, std: Optional[str] = given_model.STD, scale: Optional[str] = given_model.SCALE,
    resize: Optional[int] = given_model.RESIZE, crop: Optional[int] = given_model.CROP,
    channel_order: Optional[str] = given_model.CHANNEL_ORDER, interpolation: Optional[str] = given_model.INTERPOLATION,
    labels: Optional[str] = given_model.LABELS, output_kind: Optional[str] = given_model.OUTPUT_KIND,
):
    """Search backbones x strategies x input sizes x sparsity x quantization x format on Ray (or, with --model, formats x quantization of a given model); Pareto front and winner per target."""
    from ..errors import UsageError
    from ..search import SearchConfig

    sparsities = tuple(finite(v, "--sparsity") for v in _split([sparsity]))
    try:
        sizes = tuple(int(v) for v in _split([input_sizes])) if input_sizes else ()
    except ValueError:
        raise UsageError(f"--input-sizes takes comma-separated integers, got {input_sizes!r}") from None
    config = SearchConfig(data=data, out=out, targets=tuple(_split(target)), backbones=tuple(_split([backbones])),
                          strategies=tuple(_split([strategies])), sparsity=sparsities,
                          quantize=tuple("fp32" if q == "none" else q for q in _split([quantize])),
                          formats=tuple(_split([formats])), epochs=epochs, prune_epochs=prune_epochs,
                          prune_method=prune_method, prune_loss=prune_loss, prune_patience=prune_patience,
                          weights=weights, input_size=input_size, input_sizes=sizes, batch_size=batch_size,
                          seed=seed, runs=runs, threads=threads, max_latency_ms=max_latency_ms, max_size_mb=max_size_mb,
                          max_drop=max_drop, eta=eta, space=space, address=address,
                          **given_model.model_options(model, preprocess, mean, std, scale, resize, crop, channel_order,
                                                      interpolation, labels, output_kind))
    config.validate()  # bad arguments and a forbidden --out fail before Ray starts
    from ..search import require_winners
    from ..search import search as run_search

    result = run_search(config)
    typer.echo(result.markdown)
    require_winners(result)


@app.command()
def prune(
    model_dir: Path = typer.Argument(..., help="Model directory written by `edgetl finetune`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output model directory (or sweep report directory)."),
    method: str = typer.Option("magnitude", help="magnitude (unstructured zeros) | structured (remove channels)."),
    sparsity: float = typer.Option(0.5, help="Target sparsity in (0, 1): weights (magnitude) or expanded channels (structured)."),
    schedule: str = typer.Option("polynomial", help="magnitude: constant | polynomial (ramp 0 -> target)."),
    importance: str = typer.Option("l1", help="structured: l1 (filter L1 norm) | bn (BatchNorm |gamma|)."),
    data: Optional[Path] = typer.Option(None, help="Image folder for recovery (default: the model's training data)."),
    epochs: int = typer.Option(2, help="Recovery fine-tuning epochs (0: prune only)."),
    batch_size: int = typer.Option(16),
    lr: float = typer.Option(1e-4, help="Recovery learning rate (Adam)."),
    recovery_loss: str = typer.Option("distill", help="distill (from the unpruned model, as --strategy distill) | labels (cross-entropy) | features (structured: match its pooled features)."),
    patience: int = typer.Option(0, help="Recovery: stop after this many epochs without a lower val loss and keep the best (0: off)."),
    channel_multiple: int = typer.Option(8, help="structured: round kept channels up to a multiple of this (1: no rounding)."),
    reconstruct: bool = typer.Option(True, help="structured: least-squares refit of each projection to the original outputs before recovery."),
    recalibrate_bn: bool = typer.Option(False, help="structured: re-estimate BatchNorm statistics on the training images."),
    min_params: int = typer.Option(1000, help="magnitude: kernels with fewer weights stay dense."),
    prune_classifier: bool = typer.Option(False, help="magnitude: prune the final classifier too."),
    sweep: Optional[str] = typer.Option(None, help="Comma-separated sparsities, e.g. 0.25,0.5,0.75: one report."),
):
    """Prune a fine-tuned model (magnitude or structured), fine-tune to recover, write a plain Keras model."""
    sweep_values = tuple(finite(v, "--sweep") for v in _split([sweep])) if sweep else ()
    from ..pruning import PruneConfig

    config = PruneConfig(model_dir=model_dir, out=out, method=method, sparsity=sparsity, schedule=schedule,
                         importance=importance, data=data, epochs=epochs, batch_size=batch_size, lr=lr,
                         recovery_loss=recovery_loss, patience=patience, channel_multiple=channel_multiple,
                         reconstruct=reconstruct, recalibrate_bn=recalibrate_bn, min_params=min_params,
                         prune_classifier=prune_classifier, sweep=sweep_values)
    config.validate()  # bad arguments fail before TensorFlow loads
    load_tensorflow()
    from ..pruning import prune as run_prune

    result = run_prune(config)
    if config.sweep:
        typer.echo(f"sweep: {result.model_dir / 'sweep.md'}")
        for row in result.record["rows"]:
            typer.echo(f"  {row['label']:12s} val_accuracy {row.get('val_accuracy')}  "
                       f"latency_p50_ms {row.get('latency_p50_ms')}  onnx_gzip {row.get('onnx_gzip_bytes')}")
    else:
        acc = result.record["accuracy"]
        typer.echo(f"model: {result.model_dir}  params {result.record['params_before']} -> "
                   f"{result.record['params_after']}  val_accuracy {acc['original']} -> "
                   f"{acc['before_recovery']} (pruned) -> {acc['after_recovery']} (recovered)")


@app.command()
def export(
    model: Path = typer.Argument(..., help="Model directory (model.keras + edgetl.json), a .keras file, a SavedModel directory or an .onnx file."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for artifacts (written atomically)."),
    format: Optional[List[str]] = typer.Option(None, "--format", "-f", help="onnx | tflite | openvino (repeat or comma-separate; default onnx)."),
    quantize: Optional[List[str]] = typer.Option(None, "--quantize", "-q", help="fp32 | fp16 | dynamic | int8 (repeat or comma-separate; default fp32)."),
    input_dtype: Optional[List[str]] = typer.Option(None, help="float32 | uint8 (uint8: normalisation in the graph, raw pixels in)."),
    calib: Optional[Path] = typer.Option(None, help="Calibration image folder (labels not needed); required for int8."),
    calib_size: int = typer.Option(300, help="Calibration images to use."),
    calib_method: str = typer.Option("minmax", help="ONNX activation ranges: minmax | entropy | percentile."),
    check: Optional[Path] = typer.Option(None, help="Held-back images for parity (default: the model's val split)."),
    min_agreement: float = typer.Option(0.98, help="Top-1 agreement with Keras FP32 an int8/dynamic artifact needs."),
    accuracy_aware: bool = typer.Option(False, help="Keep the most sensitive layers in float until --min-agreement holds."),
    qat_epochs: int = typer.Option(0, help="int8: quantization-aware fine-tuning for N epochs on the --calib images first (label-free: distils the FP32 model's own outputs); the learned weights and ranges go into every format."),
    int8_weights: str = typer.Option("auto", help="ONNX/OpenVINO int8 weights: auto (by --target-cpu: ONNX full; OpenVINO full for vnni/arm, pair-safe for any/no-vnni) | full (8-bit) | pair-safe (a little coarser, so x86 CPUs without VNNI run them exactly on their fast kernels) | 7-bit (ORT reduce_range / NNCF overflow fix)."),
    target_cpu: str = typer.Option("any", help="CPU the int8 artifacts are for (what --int8-weights auto means): any (portable: OpenVINO pair-safe) | vnni | no-vnni | arm | this (the exporting CPU)."),
    bias_correction: bool = typer.Option(True, help="INT8: correct each layer's bias for its weights' rounding and pair bounding, classifier head in float for TFLite (--no-bias-correction: the converters' plain INT8)."),
    opset: int = typer.Option(17, help="ONNX opset (tf2onnx supports <= 18)."),
    static_batch: Optional[int] = typer.Option(None, "--static-batch", help="Fixed batch size N in the artifacts' input (benchmark_app, NPU compilers; default dynamic)."),
    input_size: Optional[int] = typer.Option(None, help="Input size, for a model without edgetl.json."),
    labels: Optional[str] = typer.Option(None, help="Comma-separated class names or a labels file (one a line), for a model without edgetl.json."),
    preprocess: Optional[str] = typer.Option(None, help="Model without edgetl.json: a preset (torchvision: ImageNet mean/std on 0..1 | keras-inception: -1..1 | raw: 0..255) or a recipe JSON file (the sidecar's preprocessing form)."),
    mean: Optional[str] = typer.Option(None, help="Per-channel mean, 1 or 3 numbers on the --scale'd range (e.g. 0.485,0.456,0.406)."),
    std: Optional[str] = typer.Option(None, help="Per-channel std, 1 or 3 numbers on the --scale'd range."),
    scale: Optional[str] = typer.Option(None, help="Pixels (0..255) times this first, e.g. 1/255 for a model taking 0..1."),
    resize: Optional[int] = typer.Option(None, help="Resize the shorter side to N before the centre crop (0: straight to the input size)."),
    crop: Optional[int] = typer.Option(None, help="Centre crop S x S: the model's input size when it is not fixed."),
    channel_order: Optional[str] = typer.Option(None, help="RGB | BGR."),
    interpolation: Optional[str] = typer.Option(None, help="bilinear | bicubic | nearest."),
    output_kind: Optional[str] = typer.Option(None, help="logits | probabilities: checked against what is detected (trailing softmax, rows summing to 1)."),
    overwrite: bool = typer.Option(True, help="Replace an existing --out folder."),
    target: Optional[str] = typer.Option(None, help="Export what one target runs (see `edgetl targets`), e.g. npu:qnn-htp, npu:ethos-u55-256, gpu:cuda; replaces --format/--quantize."),
    soc: Optional[str] = typer.Option(None, help="npu:qnn-htp: Snapdragon to compile for (default SM8850, Snapdragon 8 Elite Gen 5), e.g. SM8750, SM8650, SC8380XP."),
    qnn_scheme: str = typer.Option("edgetl", help="npu:qnn-htp quantization: edgetl (the CPU INT8 recipe, batch fixed: most accurate on the HTP) | u8s8-per-channel | u8u8 | u16u8 (ORT get_qnn_qdq_config)."),
    system_config: Optional[str] = typer.Option(None, help="npu:ethos-u*: Vela system config (default: Vela's for that NPU)."),
    memory_mode: Optional[str] = typer.Option(None, help="npu:ethos-u*: Vela memory mode (default: Vela's)."),
    allow_cpu_fallback: bool = typer.Option(False, "--allow-cpu-fallback", help="NPU targets: accept ops left for the CPU instead of failing."),
):
    """Export a trained model (edgetl's, a .keras/SavedModel or an ONNX file) to ONNX / TFLite / OpenVINO, FP32 or quantized, with parity checks."""
    from ..exporting import ExportConfig
    from ..exporting import export as run_export
    from ..preprocess_presets import StatedPreprocessing

    stated = StatedPreprocessing(preprocess, mean, std, scale, resize, crop, channel_order, interpolation)
    config = ExportConfig(model=model, preprocessing=stated, output_kind=output_kind, out=out, formats=tuple(_split(format) or ["onnx"]),
                          modes=tuple(_split(quantize) or ["fp32"]),
                          input_dtypes=tuple(_split(input_dtype) or ["float32"]), calib=calib,
                          calib_size=calib_size, calib_method=calib_method, check=check,
                          min_agreement=min_agreement, accuracy_aware=accuracy_aware, qat_epochs=qat_epochs,
                          int8_weights=int8_weights, target_cpu=target_cpu, bias_correction=bias_correction,
                          opset=opset, static_batch=static_batch,
                          input_size=input_size, labels=tuple(_split([labels])) if labels else (), overwrite=overwrite,
                          target=target, soc=soc, qnn_scheme=qnn_scheme, system_config=system_config,
                          memory_mode=memory_mode, allow_cpu_fallback=allow_cpu_fallback)
    config.validate()  # bad arguments fail before TensorFlow's start-up cost
    from ..targets.options import check_export_options

    check_export_options(config)  # --soc / Vela options: unknown values fail, ignored ones warn
    if target:
        from ..targets import preflight_export

        preflight_export(config)  # unknown target, missing tooling (exit 3), no --calib: before TensorFlow
    load_tensorflow()
    result = run_export(config)
    typer.echo(result.table())
    typer.echo(f"wrote {len(result.artifacts)} artifact(s) to {result.out}")


@app.command("targets")
def list_targets(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """List every target: the artifact it needs, how it is compiled and run, and what this machine has."""
    import json

    from .. import targets

    rows = targets.table()
    typer.echo(json.dumps(rows, indent=2) if as_json else targets.render_table(rows))


@app.command("backbones")
def list_backbones():
    """List the registered backbones with input size, feature width and preprocessing."""
    from .. import zoo

    for name in zoo.names():
        spec = zoo.get(name)
        p = spec.preprocessing
        typer.echo(f"{name:22s} input {spec.input_size:3d}  features {spec.feature_dim:4d}  "
                   f"mean {p.mean} std {p.std} {p.channel_order}  weights: {spec.imagenet_source}")


@app.command("bench")
def bench_command(
    artifacts: List[Path] = typer.Argument(..., help="Artifacts (.onnx/.tflite/.xml with sidecars) or folders of them."),
    target: str = typer.Option("cpu", help="cpu | gpu | npu, or a registered target such as npu:qnn-htp, npu:ethos-u55-256, gpu:cuda (`edgetl targets`); exit 3 when this machine has no such device."),
    data: Path = typer.Option(..., "--data", help="Labelled image folder DATA/<class>/* for accuracy."),
    out: Path = typer.Option(..., "--out", "-o", help="Report directory (bench.json, bench.csv, report.md/.html)."),
    reference: Optional[Path] = typer.Option(None, help="FP32 reference: a Keras model dir or an .onnx file (default: the sidecars' source model)."),
    runs: int = typer.Option(50, help="Timed runs per artifact and batch size."),
    warmup: int = typer.Option(5, help="Untimed warm-up runs before timing."),
    batch_sizes: str = typer.Option("1,8", help="Comma-separated batch sizes."),
    threads: Optional[int] = typer.Option(None, help="Runtime threads (default: each runtime's own)."),
    runtime: str = typer.Option("auto", help="auto | onnxruntime | tflite | openvino (only that runtime's artifacts)."),
    strict: bool = typer.Option(False, "--strict", help="Any CPU fallback on gpu/npu is an error (exit 1)."),
    fast_int8: bool = typer.Option(False, "--fast-int8", help="ONNX Runtime INT8 on x86 CPUs without VNNI: the faster, saturating U8S8 kernels instead of exact ones."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
    overhead_check: bool = typer.Option(True, "--overhead-check/--no-overhead-check", help="Measure the timing harness's own overhead (10 x --runs extra calls on the first artifact)."),
    simulate: bool = typer.Option(False, "--simulate", help="NPU targets without the device: the vendor simulator's accuracy/agreement and the compiler's estimated latency and memory (labelled simulated/estimated)."),
    allow_cpu_fallback: bool = typer.Option(False, "--allow-cpu-fallback", help="NPU targets: accept nodes left for the CPU instead of failing."),
    profile: bool = typer.Option(False, "--profile", help="Per-op profile of each artifact (ONNX Runtime profiling, OpenVINO performance counters): top ops and the share by op kind."),
):
    """Latency, memory, size and accuracy of artifacts vs their FP32 Keras reference."""
    from ..errors import UsageError

    if ":" in target or simulate:  # a registered target (npu:qnn-htp, gpu:cuda, ...): edgetl.targets.bench
        from ..targets.bench import TargetBenchConfig, bench_target, preflight_target

        tconfig = TargetBenchConfig(artifacts=tuple(artifacts), data=data, out=out, target=target,
                                    reference=reference, simulate=simulate, allow_cpu_fallback=allow_cpu_fallback,
                                    runs=runs, warmup=warmup, threads=threads, overwrite=overwrite)
        if preflight_target(tconfig):
            load_tensorflow()
        result = bench_target(tconfig)
        typer.echo(result.markdown)
        typer.echo(f"report: {result.out}")
        return

    try:
        sizes = tuple(int(b) for b in _split([batch_sizes]))
    except ValueError:
        raise UsageError(f"--batch-sizes takes comma-separated integers, got {batch_sizes!r}") from None
    from ..benchmark import BenchConfig, preflight
    from ..benchmark import bench as run_bench

    config = BenchConfig(artifacts=tuple(artifacts), data=data, out=out, target=target, reference=reference,
                         runs=runs, warmup=warmup, batch_sizes=sizes, threads=threads, runtime=runtime,
                         strict=strict, overwrite=overwrite, exact_int8=not fast_int8,
                         measure_overhead=overhead_check, profile=profile)
    if preflight(config).needs_tensorflow:  # fail fast (device, --out, files) before TensorFlow loads
        load_tensorflow()  # quietly: keeps CUDA probing chatter off stderr
    try:
        result = run_bench(config)
    except EdgetlError as exc:  # some artifacts failed: the report of the others still prints
        partial = getattr(exc, "result", None)
        if partial is not None:
            typer.echo(partial.markdown)
            typer.echo(f"report: {partial.out}")
        raise
    typer.echo(result.markdown)
    typer.echo(f"report: {result.out}")


@app.command()
def predict(
    artifact: Path = typer.Argument(..., help="Exported artifact (.onnx, .tflite or .xml) with its sidecar .json."),
    images: List[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively, sorted)."),
    top_k: int = typer.Option(5, "--top-k", min=1, help="How many labels to print per image."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of text."),
    device: str = typer.Option("cpu", help="cpu | gpu | npu (the runtime's own providers/devices)."),
    threads: Optional[int] = typer.Option(None, min=1, help="Intra-op threads of the runtime."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip checking the artifact's files against the sha256 in its sidecar."),
):
    """Classify images with an exported artifact (no TensorFlow needed)."""
    # Device path: only edgetl.runtime (numpy, Pillow, one runtime); never load_tensorflow() here.
    import json

    from ..errors import UsageError
    from ..preprocess import ImageDecodeError, open_image
    from ..runtime import EdgeModel
    from ..runtime.model import iter_image_files

    model = EdgeModel.load(artifact, device=device, threads=threads, verify=not no_verify)
    results = []
    for path, named in iter_image_files(images):
        try:
            image = open_image(path, model.recipe.decode)
        except ImageDecodeError as exc:
            if named:
                raise UsageError(str(exc)) from None
            from ..console import stderr as edgetl_stderr

            typer.echo(f"edgetl: warning: skipped {exc}", file=edgetl_stderr)
            continue
        ranked = model.predict(image, top_k=top_k)
        results.append((path, ranked))
        if not as_json:
            typer.echo(f"{path}: " + ", ".join(f"{label} {score:.4f}" for label, score in ranked))
    if not results:
        raise UsageError("none of the given images could be decoded")
    if as_json:
        typer.echo(json.dumps([{"image": str(path), "predictions": [{"label": label, "score": score}
                                                                    for label, score in ranked]}
                               for path, ranked in results], indent=2))
