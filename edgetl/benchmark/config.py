"""What a bench run is given and returns: its config, the artifacts it benches (with their sidecars),
the bench.json schema."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import UsageError
from ..metadata import (ArtifactSidecar, check_model_metadata, compiled_for_npu, read_sidecar, sidecar_path,
                        verify_artifact)
from ..preprocess import Preprocessing
from ..runtime import backends

BENCH_SCHEMA = "edgetl.bench/2"  # /2: paired latency ratios and accuracy intervals
TARGETS = ("cpu", "gpu", "npu")
RUNTIMES = {"auto": None, "onnxruntime": "onnx", "tflite": "tflite", "litert": "tflite", "openvino": "openvino"}


def bench_schema() -> dict[str, Any]:
    """The JSON schema bench.json follows (shipped as edgetl/schemas/bench.schema.json)."""
    from importlib import resources

    return json.loads((resources.files("edgetl") / "schemas" / "bench.schema.json").read_text())


@dataclass
class BenchConfig:
    artifacts: Sequence[Path]
    data: Path
    out: Path
    target: str = "cpu"
    reference: Path | None = None  # default: source_model.path from the sidecars, when it exists
    runs: int = 50
    warmup: int = 5
    batch_sizes: Sequence[int] = (1, 8)
    threads: int | None = None
    runtime: str = "auto"
    strict: bool = False
    overwrite: bool = False
    measure_overhead: bool = True
    # ONNX Runtime INT8 on x86 without VNNI: exact U8U8 kernels (default) or the faster, saturating
    # U8S8 ones (edgetl.runtime.cpu); the choice is recorded per artifact as runtime_settings.
    exact_int8: bool = True
    # --profile: per-op profile of each artifact on its runtime (edgetl.profile)
    profile: bool = False
    profile_runs: int = 20
    # OpenVINO FP32 IRs also at the CPU plugin's own precision where it is not f32 (bf16 CPUs)
    openvino_native_precision: bool = True
    benchmark_app_seconds: int = 2  # 0: do not run benchmark_app beside edgetl's timing
    # An artifact benched beside the others (added when not among them) that every row's latency is also
    # given relative to, from the shared rounds: the search's fixed yardstick across trials and nodes.
    anchor: Path | None = None

    def all_artifacts(self) -> list[Path]:
        return [*map(Path, self.artifacts), *([Path(self.anchor)] if self.anchor is not None else [])]

    def backend_options(self, fmt: str) -> dict:
        return {"exact_int8": self.exact_int8} if fmt == "onnx" else {}

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise UsageError(f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.runtime not in RUNTIMES:
            raise UsageError(f"--runtime must be one of auto, onnxruntime, tflite, openvino, got {self.runtime!r}")
        if self.runs < 1 or self.warmup < 0:
            raise UsageError(f"--runs must be >= 1 and --warmup >= 0 (got {self.runs}, {self.warmup})")
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise UsageError(f"--batch-sizes must be positive integers, got {list(self.batch_sizes)}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")
        if not self.artifacts:
            raise UsageError("no artifact given")


@dataclass
class BenchResult:
    json: dict[str, Any]
    rows: list[dict[str, Any]]
    markdown: str
    out: Path


@dataclass
class Artifact:
    path: Path
    sidecar: dict[str, Any]
    name: str = ""  # how reports name it: the file name, or parent/file when file names collide
    options: dict[str, Any] = field(default_factory=dict)  # backend options of this variant (precision)
    problem: str | None = None  # why it cannot be benched (an unreadable sidecar): a failed row, one line
    elsewhere: str | None = None  # compiled for an NPU, asked to run on a CPU: listed as not benched, why

    @property
    def format(self) -> str:
        return self.sidecar.get("format") or backends.artifact_format(self.path)

    @property
    def recipe(self) -> Preprocessing:
        return Preprocessing.from_dict(self.sidecar["preprocessing"])

    @property
    def takes_uint8(self) -> bool:
        return self.sidecar["input"].get("dtype") == "uint8"

    @property
    def output_kind(self) -> str:
        return self.sidecar.get("output", {}).get("kind", "probabilities")

    @property
    def quantization(self) -> str:
        return (self.sidecar.get("quantization") or {}).get("mode") or "none"

    @property
    def files(self) -> list[Path]:
        # Everything that ships to the device: OpenVINO keeps its weights in a .bin beside the .xml.
        listed = [self.path.with_name(name) for name in self.sidecar.get("files", [])]
        extra = backends.backend_class(self.format).companion_files(self.path)
        return list(dict.fromkeys([self.path, *[p for p in listed + extra if p.exists()]]))


def read_bench_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar of ``path`` with what a bench reads checked: readable JSON of the artifact schema,
    field types (``ArtifactSidecar``), ``labels``, ``preprocessing.input_size`` and ``input``. One
    ``UsageError`` line naming the file and the field otherwise."""
    data = read_sidecar(path)
    side = sidecar_path(path)
    ArtifactSidecar.from_dict(data, side)
    check_model_metadata(data, side)  # the same labels / recipe rule as edgetl.json
    if not isinstance(data.get("input"), dict):
        raise UsageError(f"{side}: field 'input' is missing (the input tensor's name, shape and dtype)")
    return data


def expand_artifacts(paths: Sequence[str | Path], runtime: str = "auto", compiled_too: bool = False,
                     unreadable_as_failed: bool = False) -> list[Artifact]:
    """ARTIFACT arguments -> artifacts with their sidecars; a directory means every artifact in it.
    ``unreadable_as_failed`` (what ``edgetl bench`` asks): sidecars are checked (``read_bench_sidecar``)
    and an artifact whose sidecar cannot be used comes back with its ``problem`` (the bench reports it
    as failed and benches the others) instead of stopping everything here."""
    wanted_format = RUNTIMES[runtime]
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix.lower() in backends.FORMAT_BY_SUFFIX
                            and sidecar_path(p).exists())
            inside = [p for p in inside if wanted_format in (None, backends.artifact_format(p))]
            if not inside:
                what = f"{runtime} " if wanted_format else ""
                raise UsageError(f"{path}: no {what}artifact (*.onnx, *.tflite, *.xml with a .json sidecar) in it")
            found += inside
        elif not path.exists():
            raise UsageError(f"{path}: no such artifact")
        else:
            fmt = backends.artifact_format(path)
            if wanted_format and fmt != wanted_format:
                raise UsageError(f"{path}: a {fmt} artifact cannot run on --runtime {runtime}")
            found.append(path)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    names = [p.name for p in unique]
    artifacts = []
    for path in unique:
        name = path.name if names.count(path.name) == 1 else f"{path.parent.name}/{path.name}"
        if not unreadable_as_failed:
            artifact = Artifact(path, read_sidecar(path), name)
        else:
            try:
                artifact = Artifact(path, read_bench_sidecar(path), name)
            except UsageError as exc:
                artifact = Artifact(path, {}, name, problem=str(exc))
        if not compiled_too and not artifact.problem:
            artifact.elsewhere = compiled_for_npu(path, artifact.sidecar)
        artifacts.append(artifact)
    return artifacts


def verify_hashes(artifacts: list[Artifact]) -> None:
    """Every file of every artifact against its sidecar (``metadata.verify_artifact``; exit 1)."""
    for artifact in artifacts:
        verify_artifact(artifact.path, artifact.sidecar)
