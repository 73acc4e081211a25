"""What verifying an artifact's files against its sidecar costs at load (``EdgeModel.load(verify=True)``).

    .venv/bin/python tools/bench_verify.py                        # builds efficientnet_lite0 artifacts first
    .venv/bin/python tools/bench_verify.py a.onnx b.tflite c.xml  # artifacts with sidecars

Per artifact, in one process, interleaved round by round (median of ``--rounds``, page cache warm after
the first round, as for a service that restarts): ``verify_artifact`` alone (sha256 of every file the
sidecar lists), ``EdgeModel.load(verify=False)`` and ``EdgeModel.load()`` (verify included). Replaces
the block between the ``bench_verify`` markers in ``tools/RESULTS-runtime.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgetl.metadata import artifact_files, read_sidecar, verify_artifact  # noqa: E402
from edgetl.runtime import EdgeModel  # noqa: E402
from edgetl.timing import interleaved, machine_summary  # noqa: E402
from results_section import write_section  # noqa: E402  (tools/ is the script's own folder)

BEGIN, END = "<!-- bench_verify -->", "<!-- /bench_verify -->"
MAKE = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
sys.path.insert(0, {tools!r})
from bench_runtime import _imagenet_model_dir
from edgetl.data import sample_dataset
from edgetl.exporting import ExportConfig, export
work = Path({work!r})
_imagenet_model_dir("efficientnet_lite0", work / "model")
result = export(ExportConfig(model=work / "model", out=work / "artifacts", formats={formats!r},
                             modes={modes!r}, calib=sample_dataset(), check=sample_dataset(),
                             min_agreement=0.5, verbose=False))
print("\\n".join(str(a.path) for a in result.artifacts))
"""


def build(work: Path, formats: tuple[str, ...] = ("onnx", "tflite", "openvino"),
          modes: tuple[str, ...] = ("fp32", "int8")) -> list[Path]:
    """efficientnet_lite0 (ImageNet head, 224 px) artifacts (FP32 + INT8 of each format unless told),
    built in a child process: TensorFlow never enters the measuring one."""
    code = MAKE.format(repo=str(REPO), tools=str(REPO / "tools"), work=str(work), formats=formats, modes=modes)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if result.returncode not in (0, 1):  # 1: an INT8 artifact under the (loose) gate, still written
        sys.exit(f"{Path(sys.argv[0]).stem}: building artifacts failed:\n{result.stderr[-3000:]}")
    paths = [Path(line) for line in result.stdout.split() if line.strip()]
    return paths or sorted(p for p in (work / "artifacts").iterdir() if p.suffix in (".onnx", ".tflite", ".xml"))


def measure(path: Path, rounds: int) -> dict:
    sidecar = read_sidecar(path)
    EdgeModel.load(path, threads=1)  # first use: runtime import, plugin start-up, page cache
    times = interleaved({"verify": lambda: verify_artifact(path, sidecar),
                         "load_noverify": lambda: EdgeModel.load(path, threads=1, verify=False),
                         "load": lambda: EdgeModel.load(path, threads=1, verify=True)}, rounds, 1, warmup=0)
    medians = {k: statistics.median(v) for k, v in times.items()}
    size = sum(p.stat().st_size for p in artifact_files(path))
    return {"artifact": path.name, "files": len(sidecar.get("files") or [path.name]), "mb": size / 1e6,
            **medians, "share": medians["verify"] / medians["load_noverify"],
            "mb_per_s": size / 1e6 / (medians["verify"] / 1e3)}


def render(rows: list[dict], rounds: int) -> str:
    lines = [BEGIN, "## Artifact verification at load",
             "",
             f"Written by `tools/bench_verify.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
             f"{machine_summary()} (shared), model `efficientnet_lite0` "
             f"(ImageNet head, 224 px), runtime threads = 1, median of {rounds} rounds, page cache warm.",
             "",
             "`verify` = sha256 of every file the sidecar lists (`metadata.verify_artifact`); `load` = "
             "`EdgeModel.load(path)` (verifies); `load --no-verify` = `EdgeModel.load(path, verify=False)`.",
             "",
             "| artifact | files | MB | verify ms | load --no-verify ms | load ms | verify / load | sha256 MB/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['artifact']} | {r['files']} | {r['mb']:.1f} | {r['verify']:.1f} | "
                     f"{r['load_noverify']:.1f} | {r['load']:.1f} | {r['share']:.0%} | {r['mb_per_s']:.0f} |")
    lines += ["", "Warm loads in one process are the worst case for the share; a fresh process also pays the "
              "runtime import and first-use start-up of the cold-start table above, next to which verification "
              "is small. The explicit fast path: `EdgeModel.load(path, verify=False)`, "
              "`edgetl predict --no-verify`.", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="*", type=Path)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "tools" / "RESULTS-runtime.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgetl-bench-verify-") as work:
        paths = args.artifacts or build(Path(work))
        rows = [measure(p, args.rounds) for p in paths]
        block = render(rows, args.rounds)
    print(block)
    write_section(args.out, BEGIN, END, block)


if __name__ == "__main__":
    main()
