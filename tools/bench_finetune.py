"""Fine-tuning speed and memory, before vs after, in one run: wall time, images/s per phase, peak RSS and
val accuracy for each strategy, plus one ``features`` epoch on a large generated folder.

    python tools/bench_finetune.py --before DIR [--data ../shared/data/flowers/train]
        [--strategies features,freeze,full] [--trees before,after] [--big 30000] [--json out.json]

``--before`` is a checkout of the code to compare with (e.g. ``git archive main | tar -x -C DIR``); the
"after" tree is this repository. Each run is a fresh process (``PYTHONPATH`` = its tree) so peak RSS
(``ru_maxrss``) and import time are its own; runs go one after the other. Images/s per phase come
from the one line per epoch that every version prints (photos / epoch seconds), and from the
``[cache]`` line of the frozen-feature cache. ``--big N`` builds N photos in a temporary folder from
the data's photos (random crops, re-encoded JPEG, so every file differs) and trains one ``features``
epoch on them with the after tree.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
started = time.perf_counter()
from edgetl.training import FinetuneConfig, finetune
config = FinetuneConfig(**json.loads(sys.argv[1]))
result = finetune(config)
print("BENCH " + json.dumps({"seconds": time.perf_counter() - started, "val_accuracy": result.val_accuracy,
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "train": result.metadata["dataset"]["train"]["count"], "val": result.metadata["dataset"]["val"]["count"]}))
"""

EPOCH = re.compile(r"^\[(\w+)\] epoch (\d+)/(\d+) .*?\((\d+\.\d+)s")
CACHE = re.compile(r"^\[cache\] .*? in (\d+\.\d+)s \((\d+\.\d+) images/s\)")


def run_one(tree: Path, config: dict, log: Path) -> dict:
    """One finetune in a fresh process on ``tree``; its timings parsed from its progress lines."""
    env = {**os.environ, "PYTHONPATH": str(tree), "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.perf_counter()
    # cwd outside any tree: ``python -c`` puts the working directory first on sys.path.
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config)], env=env, capture_output=True,
                          text=True, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - started
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1], "wall_s": wall}
    result = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("BENCH "))[6:])
    phases: dict[str, dict] = {}
    for line in proc.stderr.splitlines():
        if m := CACHE.match(line):
            phases["cache"] = {"seconds": float(m[1]), "images_per_s": float(m[2])}
        elif m := EPOCH.match(line):
            phase = phases.setdefault(m[1], {"seconds": 0.0, "epochs": 0})
            phase["seconds"] += float(m[4])
            phase["epochs"] += 1
    for name, phase in phases.items():
        if name != "cache":
            phase["images_per_s"] = result["train"] * phase["epochs"] / max(phase["seconds"], 1e-9)
    return {**result, "wall_s": wall, "phases": phases}


def build_big(source: Path, count: int, out: Path, seed: int = 0) -> Path:
    """``count`` JPEGs under out/<class>/ made of random crops (60-100% of a side) of the source photos."""
    from PIL import Image

    rng = random.Random(seed)
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())
    photos = {c: sorted((source / c).glob("*.jpg")) for c in classes}
    for i in range(count):
        name = classes[i % len(classes)]
        with Image.open(rng.choice(photos[name])) as image:
            image = image.convert("RGB")
            w, h = image.size
            s = rng.uniform(0.6, 1.0)
            cw, ch = int(w * s), int(h * s)
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            (out / name).mkdir(parents=True, exist_ok=True)
            image.crop((x, y, x + cw, y + ch)).save(out / name / f"{i:06d}.jpg", quality=rng.randint(80, 95))
    return out


def machine() -> dict:
    flags = open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0].split()
    return {"loadavg": open("/proc/loadavg").read().split()[:3], "cpus": os.cpu_count(),
            "flags": [f for f in ("avx512f", "avx512_vnni", "amx_tile", "amx_int8", "amx_bf16") if f in flags]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a checkout of the code to compare with")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/flowers/train")
    parser.add_argument("--strategies", default="features,freeze,full")
    parser.add_argument("--trees", default="before,after", help="which trees to run, in this order")
    parser.add_argument("--big", type=int, default=0, help="photos in the generated folder (0: skip)")
    parser.add_argument("--extra", default="{}", help="JSON FinetuneConfig fields for the after tree")
    parser.add_argument("--json", type=Path, default=Path("bench_finetune.json"))
    args = parser.parse_args()
    args.data = args.data.resolve()  # the runs' working directory is elsewhere
    trees = {"before": args.before, "after": REPO}
    results = json.loads(args.json.read_text()) if args.json.is_file() else {"runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        tmp = Path(tmp)
        for strategy in filter(None, args.strategies.split(",")):  # --strategies "" : only --big
            for tree in filter(None, args.trees.split(",")):
                config = {"data": str(args.data), "out": str(tmp / f"{tree}-{strategy}"), "strategy": strategy}
                if tree == "after":
                    config.update(json.loads(args.extra))
                row = {"tree": tree, "strategy": strategy, "data": args.data.name, "config": config,
                       "machine_before": machine()}
                row.update(run_one(trees[tree], config, tmp / f"{tree}-{strategy}.log"))
                row["machine_after"] = machine()
                results["runs"].append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
                args.json.write_text(json.dumps(results, indent=1))
        if args.big:
            started = time.perf_counter()
            big = build_big(args.data, args.big, tmp / "big")
            built = time.perf_counter() - started
            config = {"data": str(big), "out": str(tmp / "big-out"), "strategy": "features", "epochs": 1,
                      **json.loads(args.extra)}
            row = {"tree": "after", "strategy": "features", "data": f"{args.big} generated", "build_s": built,
                   "config": config, "machine_before": machine(), **run_one(REPO, config, tmp / "big.log")}
            row["machine_after"] = machine()
            results["runs"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
            args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
