"""What ``export`` returns: one ``ArtifactResult`` per file written, gathered in an ``ExportResult``
(its ``summary()`` is ``export_summary.json``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckFailed


@dataclass
class ArtifactResult:
    format: str
    mode: str
    input_dtype: str
    path: Path
    sidecar: dict[str, Any]
    seconds: float

    @property
    def parity(self) -> dict[str, Any]:
        return self.sidecar["parity"]

    @property
    def passed(self) -> bool:
        return bool(self.parity.get("passed"))

    @property
    def size_bytes(self) -> int:
        return self.sidecar["size_bytes"]


@dataclass
class ExportResult:
    out: Path
    artifacts: list[ArtifactResult] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    compared_on: str = ""

    @property
    def failed(self) -> list[ArtifactResult]:
        return [a for a in self.artifacts if not a.passed]

    def get(self, fmt: str, mode: str, input_dtype: str = "float32") -> ArtifactResult:
        for artifact in self.artifacts:
            if (artifact.format, artifact.mode, artifact.input_dtype) == (fmt, mode, input_dtype):
                return artifact
        raise KeyError((fmt, mode, input_dtype))

    def table(self) -> str:
        """Markdown table of what was written."""
        rows = ["| artifact | MB | vs fp32 | top-1 agreement | max abs diff | cosine | passed |",
                "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for a in self.artifacts:
            base = next((b for b in self.artifacts if (b.format, b.mode, b.input_dtype)
                         == (a.format, "fp32", a.input_dtype)), None)
            ratio = f"{a.size_bytes / base.size_bytes:.2f}x" if base else "-"
            p = a.parity
            rows.append(f"| {a.path.name} | {a.size_bytes / 1e6:.2f} | {ratio} | {p['top1_agreement']:.3f} | "
                        f"{p['max_abs_diff']:.2e} | {p['cosine']:.5f} | {'yes' if a.passed else 'NO'} |")
        return "\n".join(rows)

    def summary(self) -> dict[str, Any]:
        return {"schema": "edgetl.export_summary/1", "out": str(self.out), "compared_on": self.compared_on,
                "calibration": self.calibration,
                "artifacts": [{"file": a.path.name, "format": a.format, "mode": a.mode,
                               "input_dtype": a.input_dtype, "size_bytes": a.size_bytes,
                               "seconds": round(a.seconds, 2), "parity": a.parity,
                               "float_layers": a.sidecar["quantization"].get("float_layers", [])}
                              for a in self.artifacts],
                "passed": not self.failed}

    def moved_to(self, out: Path) -> None:
        """Point the artifacts' paths into ``out`` (they were written into a temporary folder)."""
        for artifact in self.artifacts:
            artifact.path = Path(out) / artifact.path.name

    def raise_if_failed(self, describe, threshold: bool = True) -> None:
        """``CheckFailed`` naming the first failing artifacts (``describe(parity)``), with this result
        attached as ``error.result``: everything is written, the failing ones marked so."""
        if not self.failed:
            return
        message = (f"{len(self.failed)} artifact(s) failed parity (written, marked failing): "
                   + "; ".join(f"{a.path.name} {describe(a.parity)}" for a in self.failed[:3]))
        if threshold:
            message += f" (threshold {self.failed[0].parity['threshold']})"
        error = CheckFailed(message)
        error.result = self
        raise error
