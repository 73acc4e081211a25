"""The same `edgetl search` on a Ray cluster of 1 and then 2 worker nodes (1 CPU each, each offering
target:cpu; the head takes no task), from an empty --out each time: wall time and the ratio.

    PYTHONPATH=. python tools/bench_search.py [--nodes 1,2] [--out runs/bench-search]

Writes tools/RESULTS-search.md and tools/RESULTS-search.json. The nodes are processes of this machine,
so the ratio says how well the search spreads its stages over nodes, bounded by this machine's cores
and by whatever else runs on it.

``--target-search DATA`` instead runs the issue's target search (efficientnet_lite0, features, INT8
ONNX, unpruned and pruned, on cpu, ``--max-drop 0.5``) in ``--out`` (a rerun reuses its stages), then
times every finished artifact again in interleaved rounds at one thread (edgetl.timing), so the
speed-up of a pruned INT8 over the unpruned one comes from one shared stretch of machine time:

    PYTHONPATH=. nice -n 10 python tools/bench_search.py --target-search ../shared/data/hymenoptera/train \
        --out runs/target-search --sparsity 0,0.5 --prune-epochs 10 [--prune-lr 3e-4] [--prune-importance bn]
        [--input-sizes 224,176]

With ``--input-sizes`` the reference is the fastest unpruned INT8 at the backbone's own size (224 px):
a smaller input is a cheaper artifact just as a pruned one is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_section import write_section  # noqa: E402  (tools/ is the script's own folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="1,2")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-search"))
    parser.add_argument("--data", type=Path, default=None, help="default: the embedded ant/bee sample")
    parser.add_argument("--note", default="", help="a line about the machine's load during the run")
    parser.add_argument("--render", action="store_true", help="only rewrite the Markdown from RESULTS-search.json")
    parser.add_argument("--target-search", type=Path, default=None, metavar="DATA",
                        help="run the issue's target search on DATA instead (see the module docstring)")
    parser.add_argument("--sparsity", default="0,0.5")
    parser.add_argument("--formats", default="onnx")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--prune-epochs", type=int, default=10)
    parser.add_argument("--prune-lr", type=float, default=None)
    parser.add_argument("--prune-importance", default=None)
    parser.add_argument("--prune-loss", default=None, help="labels | distill (from the unpruned model)")
    parser.add_argument("--prune-patience", type=int, default=None, help="recovery early stopping on val loss")
    parser.add_argument("--input-sizes", default="", help="comma-separated input sizes to search (default: the backbone's)")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds (10 runs each)")
    args = parser.parse_args()
    if args.render:
        report = json.loads((ROOT / "tools" / "RESULTS-search.json").read_text())
        write_markdown(report)
        write_target_markdown(report.get("target_search") or [])
        return
    if args.target_search:
        target_search(args)
        return

    from edgetl.cli.frameworks import quiet_frameworks
    from edgetl.data import sample_dataset
    from edgetl.search import SearchConfig, search
    from edgetl.search.cluster import LocalCluster

    quiet_frameworks()
    data = args.data or sample_dataset()
    space = dict(targets=("cpu",), backbones=("efficientnet_lite0",), strategies=("features", "full"),
                 sparsity=(0.0, 0.5), quantize=("fp32", "dynamic"), formats=("onnx",), epochs=1,
                 prune_epochs=0, input_size=96, runs=10, eta=1)
    runs = []
    for count in [int(n) for n in args.nodes.split(",")]:
        out = args.out / f"nodes-{count}"
        if out.exists():
            shutil.rmtree(out)
        with LocalCluster(head_cpus=0) as cluster:
            nodes = [cluster.add_node(num_cpus=1, resources={"target:cpu": 1}) for _ in range(count)]
            load = os.getloadavg()[0]
            started = time.perf_counter()
            result = search(SearchConfig(data=data, out=out, address=cluster.address, verbose=False, **space))
            seconds = time.perf_counter() - started
        per_node = stages_per_node(out)
        runs.append({"worker_nodes": count, "seconds": round(seconds, 1), "stages_built": result.built,
                     "trials": result.counts(), "stages_per_node": {n[:12]: per_node.get(n, 0) for n in nodes},
                     "load_before": round(load, 2)})
        print(json.dumps(runs[-1]), flush=True)
    base = runs[0]["seconds"]
    for run in runs:
        run["speedup_vs_first"] = round(base / run["seconds"], 2)
    previous = _results()
    report = {"space": space, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "note": args.note, "runs": runs, "target_search": previous.get("target_search", [])}
    (ROOT / "tools" / "RESULTS-search.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report)


def _results() -> dict:
    path = ROOT / "tools" / "RESULTS-search.json"
    return json.loads(path.read_text()) if path.exists() else {}


def target_search(args) -> None:
    from edgetl import zoo
    from edgetl.cli.frameworks import quiet_frameworks
    from edgetl.runtime.backends import open_backend
    from edgetl.metadata import read_sidecar
    from edgetl.search import SearchConfig, search
    from edgetl.timing import interleaved, timing_stats

    import numpy as np

    quiet_frameworks()
    sparsity = tuple(float(v) for v in args.sparsity.split(","))
    sizes = tuple(int(v) for v in args.input_sizes.split(",") if v)
    started = time.perf_counter()
    load = os.getloadavg()[0]
    config = SearchConfig(data=args.target_search, out=args.out, targets=("cpu",), backbones=("efficientnet_lite0",),
                          strategies=("features",), sparsity=sparsity, quantize=("int8",),
                          formats=tuple(args.formats.split(",")), input_sizes=sizes,
                          epochs=args.epochs, prune_epochs=args.prune_epochs, prune_lr=args.prune_lr,
                          prune_importance=args.prune_importance, prune_loss=args.prune_loss,
                          prune_patience=args.prune_patience, max_drop=0.5, eta=1, runs=50, threads=1,
                          verbose=False)
    result = search(config)
    seconds = time.perf_counter() - started
    done = [t.record() for t in result.trials if t.status == "done"]
    rng = np.random.default_rng(0)
    runners, artifacts = {}, {}
    for row in done:
        path = Path(row["stages"]["export"]["artifact"])
        shape = read_sidecar(path)["input"]["shape"]
        batch = rng.normal(size=[1, *shape[1:]]).astype(np.float32)
        backend = open_backend(path, "cpu", threads=1)
        runners[row["trial"]] = (lambda b=backend, x=batch: b.run(x))
        artifacts[row["trial"]] = backend
    per_round = 10
    load_timing = os.getloadavg()[0]
    times = interleaved(runners, rounds=args.rounds, runs_per_round=per_round, warmup=5) if runners else {}
    load_timing = round((load_timing + os.getloadavg()[0]) / 2, 2)  # the paired timing's, start and end averaged
    # Round by round, each artifact's median; a pruned/unpruned ratio per round pairs two medians taken
    # seconds apart, so a neighbour's burst lands on both (the median over rounds is reported).
    rounds = {name: np.median(np.asarray(values).reshape(-1, per_round), axis=1) for name, values in times.items()}
    baseline = result.baseline_top1
    own_size = zoo.get("efficientnet_lite0").input_size
    full = {r["trial"] for r in done if r["sparsity"] == 0 and r.get("input_size") in (None, own_size)}
    unpruned = [r for r in done if r["trial"] in full]
    fastest_unpruned = min(unpruned, key=lambda r: timing_stats(times[r["trial"]])["p50"]) if unpruned else None
    rows = []
    for row in done:
        p50 = timing_stats(times[row["trial"]])["p50"]
        reference = timing_stats(times[fastest_unpruned["trial"]])["p50"] if fastest_unpruned else None
        paired = (float(np.median(rounds[fastest_unpruned["trial"]] / rounds[row["trial"]]))
                  if fastest_unpruned else None)
        drop = None if baseline is None else round((baseline - row["top1"]) * 100, 2)
        rows.append({"trial": row["trial"], "sparsity": row["sparsity"], "input_size": row.get("input_size"),
                     "format": row["format"], "top1": row["top1"], "drop_points": drop,
                     "search_p50_ms": row["latency_p50_ms"], "interleaved_p50_ms": round(p50, 3),
                     "speedup_vs_unpruned_int8": round(reference / p50, 2) if reference else None,
                     "paired_speedup": None if paired is None else round(paired, 2),
                     "size_bytes": row["size_bytes"], "agreement": row["agreement"],
                     "meets_target": bool(row["trial"] not in full and drop is not None and drop <= 0.5
                                          and paired is not None and paired >= 1.5)})
    pareto = json.loads((args.out / "pareto.json").read_text())["targets"]["cpu"]
    run = {"settings": {"sparsity": list(sparsity), "formats": args.formats.split(","), "epochs": args.epochs, "prune_epochs": args.prune_epochs,
                        "prune_lr": args.prune_lr, "prune_importance": args.prune_importance,
                        "prune_loss": args.prune_loss, "prune_patience": args.prune_patience,
                        "rounds": args.rounds, "threads": 1, "input_sizes": list(sizes)},
           "data": str(args.target_search), "n_val": done[0]["stages"]["bench"]["n_images"] if done else None,
           "baseline_top1": baseline, "seconds": round(seconds, 1), "stages_built": result.built,
           "load_before": round(load, 2), "load_timing": load_timing, "rows": rows, "front": [r["trial"] for r in pareto["front"]],
           "winner": (pareto["winner"] or {}).get("trial"), "winner_rule": pareto["winner_rule"],
           "failed": {t.id: t.reason for t in result.trials if t.status == "failed"},
           "met": any(r["meets_target"] for r in rows)}
    print(json.dumps(run, indent=2), flush=True)
    report = _results()
    report.setdefault("target_search", []).append(run)
    (ROOT / "tools" / "RESULTS-search.json").write_text(json.dumps(report, indent=2) + "\n")
    write_target_markdown(report["target_search"])


def write_target_markdown(runs) -> None:
    lines = ["### Target search runs (tools/bench_search.py --target-search)", "",
             "efficientnet_lite0, `features`, 5 epochs, INT8 (static; ONNX QDQ unless the format says otherwise), cpu, `--max-drop 0.5 --eta 1 "
             "--threads 1 --runs 50`; structured pruning with the recovery settings shown (1e-4 / l1 are "
             "PruneConfig's defaults). *interleaved p50*: every finished artifact timed "
             "again in alternating rounds (edgetl.timing.interleaved, 10 runs per round, 1 thread) right "
             "after the search; *paired rounds*: the median over rounds of the unpruned/pruned ratio of the "
             "two round medians (a neighbour's burst lands on both). The target counts the paired figure.", "",
             "| run | sparsity, format [, input size] | recovery epochs / lr / importance [/ loss, patience] | top-1 | drop (points) | search p50 ms | "
             "interleaved p50 ms | speed-up vs unpruned INT8 (p50s / paired rounds) | size | target met |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for index, run in enumerate(runs, 1):
        s = run["settings"]
        recovery = f"{s['prune_epochs']} / {s['prune_lr'] or '1e-4'} / {s['prune_importance'] or 'l1'}"
        if s.get("prune_loss") or s.get("prune_patience"):
            recovery += f" / {s.get('prune_loss') or 'labels'}, patience {s.get('prune_patience') or 0}"
        for row in run["rows"]:
            drop = "–" if row["drop_points"] is None else f"{row['drop_points']:.1f}"
            speedup = "–" if row["speedup_vs_unpruned_int8"] is None else f"{row['speedup_vs_unpruned_int8']:.2f}x"
            if row.get("paired_speedup") is not None:
                speedup += f" / {row['paired_speedup']:.2f}x"
            fmt = row.get("format") or row["trial"].split("/")[3]
            size = f" {row['input_size']} px" if row.get("input_size") else ""
            lines.append(f"| {index} | {row['sparsity']:g} {fmt}{size} | {recovery if row['sparsity'] else '–'} | "
                         f"{row['top1']:.1%} | {drop} | {row['search_p50_ms']:.2f} | {row['interleaved_p50_ms']:.2f} | "
                         f"{speedup} | {row['size_bytes'] / 1e6:.2f} MB | {'yes' if row['meets_target'] else 'no'} |")
    lines.append("")
    for index, run in enumerate(runs, 1):
        lines.append(f"- run {index}: FP32 baseline {run['baseline_top1']:.1%} on {run['n_val']} val images "
                     f"(one image = {100 / run['n_val']:.2f} points); winner {run['winner']} ({run['winner_rule']}); "
                     f"{run['seconds']:.0f} s, {run['stages_built']} stages built, load average {run['load_before']} "
                     f"at start" + (f", {run['load_timing']} during the interleaved timing" if run.get("load_timing") else "")
                     + f"; target {'met' if run['met'] else 'not met'}"
                     + (f"; failed: {run['failed']}" if run["failed"] else ""))
    if runs:
        lines += ["", *front_table(len(runs), runs[-1])]
    write_section(ROOT / "tools" / "RESULTS-search.md", TARGET_BEGIN, TARGET_END,
                  "\n".join([TARGET_BEGIN, *lines, TARGET_END]))


def front_table(index: int, run) -> list[str]:
    """The last run's Pareto front on cpu (top-1 up, latency down, size down) and its winner's paired speed-up."""
    rows = {r["trial"]: r for r in run["rows"]}
    lines = [f"Pareto front of run {index} (target cpu; accuracy vs latency vs size; load average "
             f"{run['load_before']} at the search's start"
             + (f", {run['load_timing']} during the interleaved timing" if run.get("load_timing") else "") + "):", "",
             "| trial | top-1 | drop (points) | search p50 ms | interleaved p50 ms | paired speed-up vs unpruned INT8 | size |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name in run["front"]:
        r = rows.get(name)
        if r:
            lines.append(f"| {name}{' (winner)' if name == run['winner'] else ''} | {r['top1']:.1%} | "
                         f"{r['drop_points']:.1f} | {r['search_p50_ms']:.2f} | {r['interleaved_p50_ms']:.2f} | "
                         f"{r['paired_speedup']:.2f}x | {r['size_bytes'] / 1e6:.2f} MB |")
    winner = rows.get(run["winner"])
    if winner:
        lines += ["", f"Winner {run['winner']}: {winner['top1']:.1%} top-1 ({winner['drop_points']:.1f} points from "
                  f"FP32 {run['baseline_top1']:.1%}), paired interleaved speed-up {winner['paired_speedup']:.2f}x "
                  f"over the fastest unpruned INT8 (its own interleaved p50 {winner['interleaved_p50_ms']:.2f} ms); target "
                  f"{'met' if winner['meets_target'] else 'not met'}."]
    return lines


def stages_per_node(out: Path) -> Counter:
    """Stages built per Ray node, from the node.json each stage folder records."""
    return Counter(json.loads(p.read_text())["node"] for p in out.glob("stages/*/*/node.json"))


def write_markdown(report) -> None:
    space = report["space"]
    lines = ["## `edgetl search` on 1 and 2 Ray worker nodes (tools/bench_search.py)", "",
             f"Space: {', '.join(space['backbones'])} x strategies {', '.join(space['strategies'])} x sparsity "
             f"{', '.join(f'{s:g}' for s in space['sparsity'])} x {', '.join(space['quantize'])} x "
             f"{', '.join(space['formats'])} at {space['input_size']} px, {space['epochs']} epoch, on the embedded "
             f"sample; target cpu; eta {space['eta']} (no branch stopped, so both runs do the same work). "
             "A loopback Ray cluster on this machine (tools/bench_search.py, edgetl.search.cluster): a head "
             "taking no task and N worker nodes of 1 CPU, each offering target:cpu.", "",
             "| worker nodes | wall s | stages built | trials done | stages per node | load avg at start | speed-up |",
             "|---:|---:|---:|---:|---|---:|---:|"]
    for run in report["runs"]:
        lines.append(f"| {run['worker_nodes']} | {run['seconds']} | {run['stages_built']} | {run['trials']['done']} | "
                     f"{', '.join(f'{k}: {v}' for k, v in run['stages_per_node'].items())} | {run['load_before']} | "
                     f"{run['speedup_vs_first']:.2f}x |")
    lines += ["", f"Machine: {report['machine']['cpus']} CPUs; its load average is recorded with each run. "
              + (report["note"] or ""), ""]
    # Only this tool's section of the file is replaced; other sections (the target search) stay.
    write_section(ROOT / "tools" / "RESULTS-search.md", BEGIN, END, "\n".join([BEGIN, *lines, END]),
                  new_at_start=True)


BEGIN, END = "<!-- tools/bench_search.py: begin -->", "<!-- tools/bench_search.py: end -->"
TARGET_BEGIN, TARGET_END = "<!-- tools/bench_search.py --target-search: begin -->", \
    "<!-- tools/bench_search.py --target-search: end -->"


if __name__ == "__main__":
    main()
