"""Does `edgetl bench` tell the same story on a quiet and on a loaded machine?

    .venv/bin/python tools/bench_noise.py --runs 50

EfficientNet-Lite0 (``--model DIR``, or one trained here for one epoch on the embedded sample with
``weights none``: latency does not depend on the weights) exported FP32 + INT8 in ONNX, LiteRT and
OpenVINO; then, on the same artifacts:

1. bench wall time at the same ``--runs``: the bench before interleaving (``--base`` commit, extracted
   with ``git archive``) and this one, alternating, each in its own process;
2. a quiet bench and a loaded bench (one pure-Python busy loop per core, bounded in time and always
   killed): each INT8/FP32 speed-up with its interval, the recommendation, and edgetl's OpenVINO p50
   against benchmark_app's median.

Targets (issue 25): loaded INT8/FP32 ratios within 15% of the quiet ones with intervals covering the
quiet value, the same recommendation, OpenVINO p50 within 20% of benchmark_app in both, bench wall
time +20% at most. Writes ``tools/RESULTS-bench-noise.md`` (load averages and CPU flags recorded;
"quiet" is the quietest this shared machine gives).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FORMATS = ("onnx", "tflite", "openvino")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="an existing lite0 model directory")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--images", type=int, default=10, help="images per class in the bench's accuracy pass")
    parser.add_argument("--base", default="ee4bcb6", help="commit of the bench before interleaving (wall time)")
    parser.add_argument("--pairs", type=int, default=2, help="old/new wall-time pairs")
    parser.add_argument("--prepare-only", action="store_true", help="train/export, measure nothing")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench_noise")
    parser.add_argument("--results", type=Path, default=REPO / "tools" / "RESULTS-bench-noise.md")
    return parser.parse_args(argv)


def prepare(args) -> tuple[Path, Path, Path]:
    """Model, artifacts (FP32 + INT8 of each format) and a small labelled data folder."""
    import shutil

    from edgetl.data import sample_dataset
    from edgetl.exporting import ExportConfig, export

    sample = sample_dataset()
    data = args.work / "data"
    if not data.exists():
        for cls in ("ants", "bees"):
            (data / cls).mkdir(parents=True)
            for path in sorted((sample / cls).glob("*.jpg"))[:args.images]:
                shutil.copyfile(path, data / cls / path.name)
    model = args.model or args.work / "model"
    if not (model / "model.keras").exists():
        from edgetl.training import FinetuneConfig, finetune

        print("[noise] training efficientnet_lite0 (1 epoch, weights none)", file=sys.stderr, flush=True)
        finetune(FinetuneConfig(data=sample, out=model, backbone="efficientnet_lite0", weights="none",
                                strategy="features", epochs=1, batch_size=16, verbose=False))
    artifacts = args.work / "artifacts"
    if not artifacts.exists():
        for fmt in FORMATS:
            print(f"[noise] exporting {fmt} fp32+int8", file=sys.stderr, flush=True)
            try:
                export(ExportConfig(model=model, out=artifacts / fmt, formats=(fmt,), modes=("fp32", "int8"),
                                    calib=sample, calib_size=64, check=data, overwrite=True, verbose=False))
            except Exception as exc:  # an INT8 under the agreement threshold is written and marked
                print(f"[noise] {fmt}: {exc}", file=sys.stderr)
    return model, artifacts, data


def base_tree(args) -> Path:
    """The edgetl package at ``--base`` (git archive: no checkout, nothing changed in the repository)."""
    tree = args.work / f"base-{args.base}"
    if not (tree / "edgetl").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.base, "edgetl"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def run_bench(root: Path, artifacts: Path, data: Path, out: Path, runs: int) -> tuple[float, dict]:
    """`edgetl bench` of every artifact from the package at ``root``, in its own process: wall seconds, bench.json."""
    command = [sys.executable, "-m", "edgetl", "bench", *[str(artifacts / f) for f in FORMATS], "--data", str(data),
               "--out", str(out), "--overwrite", "--runs", str(runs), "--batch-sizes", "1"]
    start = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench failed ({root}): {done.stderr.strip().splitlines()[-1:]}")
    return seconds, json.loads((out / "bench.json").read_text())


def busy_loops(seconds: float) -> list[subprocess.Popen]:
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(os.cpu_count() or 2)]


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def figures(report: dict) -> dict:
    """INT8/FP32 speed-ups per format (rows at batch 1), the recommendation, OpenVINO p50 vs benchmark_app."""
    rows = [r for r in report["rows"] if r["kind"] == "artifact" and r["batch_size"] == 1]
    speedups = {r["format"]: (r["speedup_vs_fp32"], r["speedup_vs_fp32_low"], r["speedup_vs_fp32_high"])
                for r in rows if r["quantization"] == "int8"}
    openvino = [(r["artifact"], r["latency_p50_ms"], r["benchmark_app_median_ms"]) for r in rows
                if r["format"] == "openvino" and r["benchmark_app_median_ms"]]
    return {"speedups": speedups, "recommendation": report["recommendation"]["artifact"],
            "recommendation_text": report["recommendation"]["text"], "openvino": openvino,
            "p50": {r["artifact"]: r["latency_p50_ms"] for r in rows}}


def main(argv=None) -> None:
    args = parse_args(argv)
    from edgetl.timing import machine_summary

    _, artifacts, data = prepare(args)
    base = base_tree(args)
    if args.prepare_only:
        return
    walls: dict[str, list[float]] = {"before": [], "after": []}
    loads = []
    quiet = None
    for i in range(args.pairs):  # alternating, so a load swing hits both versions alike
        for label, root in (("before", base), ("after", REPO)):
            before = loadavg()
            seconds, report = run_bench(root, artifacts, data, args.work / f"wall-{label}", args.runs)
            walls[label].append(seconds)
            loads.append(f"wall {label} #{i + 1}: {before} -> {loadavg()}")
            if label == "after":
                quiet = report
    if quiet is None:  # --pairs 0: no wall-time pairs, one quiet bench of its own
        before = loadavg()
        _, quiet = run_bench(REPO, artifacts, data, args.work / "quiet", args.runs)
        loads.append(f"quiet: {before} -> {loadavg()}")
    loops = busy_loops(600)
    try:
        before = loadavg()
        time.sleep(5)  # let the load average see the busy loops
        _, loaded = run_bench(REPO, artifacts, data, args.work / "loaded", args.runs)
        loads.append(f"loaded (+{len(loops)} busy loops): {before} -> {loadavg()}")
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    (args.work / "quiet.json").write_text(json.dumps(quiet, indent=1))
    q, l = figures(quiet), figures(loaded)
    lines = ["# Bench under load: quiet vs loaded (tools/bench_noise.py)", "",
             f"- machine: {machine_summary()}",
             f"- efficientnet_lite0 at {_size(quiet)} px, weights none "
             f"(latency does not depend on them), FP32 + INT8 of ONNX, LiteRT and OpenVINO; `--runs {args.runs}`, "
             f"batch 1, {quiet['data']['n_images']} images; loaded: {os.cpu_count()} pure-Python busy loops, one per core",
             "- load averages (1/5/15 min), before -> after each bench: " + "; ".join(loads),
             "- 'quiet': nothing else started on purpose; the load averages above say how quiet the machine was", "",
             "## INT8 / FP32 speed-up (paired rounds, 95% bootstrap interval)", "",
             "| format | quiet | loaded | change | loaded interval covers quiet | within 15% |", "|---|---|---|---|---|---|"]
    for fmt in FORMATS:
        if fmt not in q["speedups"] or fmt not in l["speedups"]:
            lines.append(f"| {fmt} | – | – | – | – | – |")
            continue
        (qr, ql, qh), (lr, ll, lh) = q["speedups"][fmt], l["speedups"][fmt]
        change = lr / qr - 1
        lines.append(f"| {fmt} | {qr:.2f}x [{ql:.2f}, {qh:.2f}] | {lr:.2f}x [{ll:.2f}, {lh:.2f}] | {change:+.1%} | "
                     f"{'yes' if ll <= qr <= lh else 'no'} | {'yes' if abs(change) <= 0.15 else 'no'} |")
    lines += ["", "## OpenVINO: edgetl p50 vs benchmark_app median (batch 1)", "",
              "| run | artifact | edgetl p50 ms | benchmark_app median ms | edgetl / benchmark_app |", "|---|---|---|---|---|"]
    for label, f in (("quiet", q), ("loaded", l)):
        for name, p50, tool in f["openvino"]:
            lines.append(f"| {label} | {name} | {p50:.2f} | {tool:.2f} | {p50 / tool:.2f} |")
    lines += ["", "## Recommendation", "", f"- quiet: {q['recommendation_text']}", f"- loaded: {l['recommendation_text']}",
              f"- same artifact: {'yes' if q['recommendation'] == l['recommendation'] else 'no'}", "",
              "## p50 per artifact (ms, batch 1)", "", "| artifact | quiet | loaded |", "|---|---|---|"]
    lines += [f"| {name} | {p50:.2f} | {l['p50'].get(name, float('nan')):.2f} |" for name, p50 in q["p50"].items()]
    before, after = sum(walls["before"]) / len(walls["before"]), sum(walls["after"]) / len(walls["after"])
    lines += ["", f"## Bench wall time at `--runs {args.runs}` (before: commit {args.base}, one artifact after "
              "another; after: interleaved rounds)", "",
              "| | runs (s) | mean s |", "|---|---|---|",
              f"| before | {', '.join(f'{s:.1f}' for s in walls['before'])} | {before:.1f} |",
              f"| after | {', '.join(f'{s:.1f}' for s in walls['after'])} | {after:.1f} |",
              f"| change | | {after / before - 1:+.1%} |", ""]
    args.results.write_text("\n".join(lines))
    print("\n".join(lines))


def _size(report: dict) -> str:
    prep = report.get("preprocessing") or [{}]
    return "x".join(map(str, (prep[0].get("recipe") or {}).get("input_size", ["?"])))


if __name__ == "__main__":
    main()
