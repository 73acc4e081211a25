"""Fine-tune every strategy on a real photo folder and tabulate validation accuracy and time.

    python tools/finetune_report.py [DATA] [--epochs 5] [--out tools/RESULTS-finetune.md]

Default DATA: ../shared/data/hymenoptera/train (ants vs bees, 244 usable photos), split 80/20 with
seed 0. Rows: efficientnet_lite0 with ImageNet weights for each strategy, then the same backbone
with --weights none (trained in full) to show what transfer buys.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgetl.timing import machine_summary  # noqa: E402
from edgetl.training import FinetuneConfig, finetune  # noqa: E402

RUNS = [
    ("efficientnet_lite0", "imagenet", "features", {}),
    ("efficientnet_lite0", "imagenet", "freeze", {"unfreeze_top": 20}),
    ("efficientnet_lite0", "imagenet", "full", {}),
    ("efficientnet_lite0", "none", "full", {"lr": 1e-3, "fine_tune_lr": 1e-3}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(REPO.parent / "shared/data/hymenoptera/train"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "tools" / "RESULTS-finetune.md"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (backbone, weights, strategy, extra) in enumerate(RUNS):
            started = time.perf_counter()
            result = finetune(FinetuneConfig(data=Path(args.data), out=Path(tmp) / str(i), backbone=backbone,
                                             weights=weights, strategy=strategy, epochs=args.epochs, **extra))
            seconds = time.perf_counter() - started
            rows.append((backbone, weights, strategy, result.metadata["dataset"]["train"]["count"],
                         result.metadata["dataset"]["val"]["count"], result.val_accuracy, seconds))
            print(rows[-1], flush=True)
    lines = [
        "# Fine-tuning results", "",
        f"Data: `{args.data}` (stratified 80/20 split, seed 0); {args.epochs} epochs per phase "
        f"(freeze/full: head phase + the same number of fine-tuning epochs); batch 16, Adam 1e-3 "
        f"(second phase lr/10 for freeze, lr/100 for full). Machine: {machine_summary()}, "
        f"2 cores.", "",
        "| backbone | weights | strategy | train | val | val accuracy | time (s) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {b} | {w} | {s} | {tr} | {va} | {acc:.3f} | {sec:.0f} |" for b, w, s, tr, va, acc, sec in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
