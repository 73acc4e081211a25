"""Structured pruning of EfficientNet-Lite0 at 50% of the expanded channels vs the unpruned model.

    python tools/bench_prune.py [DATA] [--epochs 3] [--recovery-epochs 3] [--sparsity 0.5]
                                [--threads 1] [--rounds 10] [--runs 20] [--work DIR] [--out FILE]

1. Fine-tune efficientnet_lite0 (ImageNet weights, ``features`` strategy) on DATA (default
   ../shared/data/hymenoptera/train, 80/20 split, seed 0).
2. ``edgetl prune --method structured --sparsity 0.5`` with recovery fine-tuning on the same split.
3. Export both to ONNX FP32 and INT8 (static, calibrated on the training folder) with edgetl.exporting.
4. Time all four artifacts batch-1 on ONNX Runtime CPU in one interleaved run (round-robin blocks, so
   load drifts on a shared machine hit every artifact alike) and report the latency ratios against
   the targets (>= 1.4x lower FP32, >= 1.3x lower INT8) and the accuracy change (target: within 2
   points after recovery). Writes a JSON + Markdown summary.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgetl.exporting import ExportConfig, export  # noqa: E402
from edgetl.training import FinetuneConfig, finetune  # noqa: E402
from edgetl.pruning import PruneConfig, prune  # noqa: E402
from edgetl.pruning.sweep import interleaved_latency  # noqa: E402
from edgetl.timing import machine_summary  # noqa: E402

TARGET_FP32, TARGET_INT8, TARGET_ACCURACY_POINTS = 1.4, 1.3, 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(REPO.parent / "shared/data/hymenoptera/train"))
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (features strategy)")
    parser.add_argument("--recovery-epochs", type=int, default=5)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--importance", default="bn")
    parser.add_argument("--recovery-lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--calib-size", type=int, default=100)
    parser.add_argument("--work", default=None, help="keep models/artifacts here (default: a temp dir)")
    parser.add_argument("--out", default=str(REPO / "tools" / "RESULTS-prune.md"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch)
        started = time.perf_counter()
        dense_dir = work / "lite0_features"
        if not (dense_dir / "model.keras").exists():
            finetune(FinetuneConfig(data=Path(args.data), out=dense_dir, backbone="efficientnet_lite0",
                                    weights="imagenet", strategy="features", epochs=args.epochs))
        pruned = prune(PruneConfig(model_dir=dense_dir, out=work / "lite0_structured", method="structured",
                                   sparsity=args.sparsity, importance=args.importance, data=Path(args.data),
                                   epochs=args.recovery_epochs, lr=args.recovery_lr))
        artifacts = {}
        for label, model_dir in (("dense", dense_dir), ("pruned", pruned.model_dir)):
            result = export(ExportConfig(model=model_dir, out=work / f"artifacts_{label}", formats=("onnx",),
                                         modes=("fp32", "int8"), calib=Path(args.data),  # parity gate off: only timing here
                                         calib_size=args.calib_size, min_agreement=0.01, verbose=False))
            for mode in ("fp32", "int8"):
                artifacts[f"{label}_{mode}"] = result.get("onnx", mode).path
        latency = interleaved_latency(artifacts, args.rounds, args.runs, threads=args.threads, warmup=10)
        record = pruned.record
        acc = record["accuracy"]
        summary = {
            "backbone": "efficientnet_lite0", "sparsity": args.sparsity, "importance": args.importance,
            "params": {"dense": record["params_before"], "pruned": record["params_after"]},
            "channels_removed": record["channels_removed"],
            "accuracy": acc,
            "accuracy_drop_points": round(100 * (acc["original"] - acc["after_recovery"]), 2),
            "latency_ms": latency,
            "speedup": {mode: latency[f"dense_{mode}"]["p50_ms"] / latency[f"pruned_{mode}"]["p50_ms"]
                        for mode in ("fp32", "int8")},
            "sizes": {name: Path(p).stat().st_size for name, p in artifacts.items()},
            "threads": args.threads, "rounds": args.rounds, "runs_per_round": args.runs,
            "machine": {"cpu": machine_summary(), "python": platform.python_version()},
            "seconds": round(time.perf_counter() - started, 1),
        }
        summary["targets_met"] = {
            "fp32": summary["speedup"]["fp32"] >= TARGET_FP32,
            "int8": summary["speedup"]["int8"] >= TARGET_INT8,
            "accuracy": summary["accuracy_drop_points"] <= TARGET_ACCURACY_POINTS,
        }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# Structured pruning, efficientnet_lite0, {args.sparsity:.0%} of expanded channels",
        "",
        f"Data: {args.data} (val split 0.2, seed 0). Params {summary['params']['dense']:,} -> "
        f"{summary['params']['pruned']:,}; {summary['channels_removed']} expanded channels removed.",
        "",
        "| artifact | p50 ms | p90 ms | size |",
        "|---|---|---|---|",
        *[f"| {name} | {v['p50_ms']:.2f} | {v['p90_ms']:.2f} | {summary['sizes'][name] / 1e6:.2f} MB |"
          for name, v in latency.items()],
        "",
        f"FP32 speed-up {summary['speedup']['fp32']:.2f}x (target >= {TARGET_FP32}x), INT8 speed-up "
        f"{summary['speedup']['int8']:.2f}x (target >= {TARGET_INT8}x); ONNX Runtime CPU, batch 1, "
        f"{args.threads} thread(s), {args.rounds} interleaved rounds x {args.runs} runs.",
        f"Val accuracy: {acc['original']:.3f} unpruned, {acc['before_recovery']:.3f} pruned before recovery, "
        f"{acc['after_recovery']:.3f} after {args.recovery_epochs} recovery epochs "
        f"(drop {summary['accuracy_drop_points']:.1f} points; target <= {TARGET_ACCURACY_POINTS}).",
        "",
    ]
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
