"""The same `edgetl search` on a Ray cluster of 1 and then 2 worker nodes (1 CPU each, each offering
target:cpu; the head takes no task), from an empty --out each time: wall time and the ratio.

    PYTHONPATH=. python tools/bench_search.py [--nodes 1,2] [--out /tmp/bench-search]

Writes tools/RESULTS-search.md and tools/RESULTS-search.json. The nodes are processes of this machine,
so the ratio says how well the search spreads its stages over nodes, bounded by this machine's cores
and by whatever else runs on it.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="1,2")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-search"))
    parser.add_argument("--data", type=Path, default=None, help="default: the embedded ant/bee sample")
    parser.add_argument("--note", default="", help="a line about the machine's load during the run")
    parser.add_argument("--render", action="store_true", help="only rewrite the Markdown from RESULTS-search.json")
    args = parser.parse_args()
    if args.render:
        write_markdown(json.loads((ROOT / "tools" / "RESULTS-search.json").read_text()))
        return

    from edgetl.cli import _quiet_frameworks
    from edgetl.data import sample_dataset
    from edgetl.search import SearchConfig, search
    from edgetl.search.cluster import LocalCluster

    _quiet_frameworks()
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
    report = {"space": space, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "note": args.note, "runs": runs}
    (ROOT / "tools" / "RESULTS-search.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report)


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
    lines += ["", f"Machine: {report['machine']['cpus']} CPUs, shared with other engineers' jobs while this ran. "
              + (report["note"] or ""), ""]
    # Only this tool's section of the file is replaced; other sections (the target search) stay.
    section = "\n".join([BEGIN, *lines, END])
    path = ROOT / "tools" / "RESULTS-search.md"
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = section + "\n" + text
    path.write_text(text)


BEGIN, END = "<!-- tools/bench_search.py: begin -->", "<!-- tools/bench_search.py: end -->"


if __name__ == "__main__":
    main()
