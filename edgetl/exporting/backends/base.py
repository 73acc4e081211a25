"""What the export stage asks of one format: the abstract ``ExportBackend``.

The orchestration (``exporting.job``) is format-free: it asks the registry (``backends.BACKENDS``) for
the format's backend and calls these methods; everything a format does differently lives behind them,
in one sibling file per format. The backends are stateless: per-call state (the Keras graph,
calibration set, parity images, cached intermediates) is the ``ExportJob`` handed to each method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from ...choices import Format, Mode

# fp32/fp16 are conversions of the float graph; dynamic/int8 quantize it.
FLOAT_MODES = (Mode.FP32, Mode.FP16)


class ExportBackend(ABC):
    format: Format
    extension: str  # of the main file
    # The sidecar's ``quantization.method`` per mode (None: plain conversion).
    methods: dict[Mode, str] = {}
    # What ``--int8-weights auto`` means for this format on a target CPU whose int8 dot product may
    # saturate (``exporting.pairs.resolve``); None: the choice does not apply (no int16 pair sums).
    auto_int8_weights: str | None = None

    @property
    def modes(self) -> tuple[Mode, ...]:
        """The modes this format can produce with the installed packages."""
        return tuple(Mode)

    def files(self, path: Path) -> list[Path]:
        """Every file of the artifact, main file first (the runtime backend knows what it loads beside it)."""
        from ...metadata import artifact_files

        return artifact_files(path)

    def build(self, job, path: Path, mode: str, input_dtype: str) -> dict[str, Any]:
        """Write the artifact for ``mode`` at ``path``; returns the sidecar's ``quantization.details``."""
        if mode in FLOAT_MODES:
            return self.convert(job, path, mode, input_dtype)
        return self.quantize(job, path, mode, input_dtype)

    @abstractmethod
    def convert(self, job, path: Path, mode: str, input_dtype: str) -> dict[str, Any]:
        """fp32 or fp16: the float graph in this format."""

    @abstractmethod
    def quantize(self, job, path: Path, mode: str, input_dtype: str) -> dict[str, Any]:
        """dynamic (int8 weights) or int8 (calibrated full integer)."""

    def make_accurate(self, job, path: Path, input_dtype: str, details: dict) -> tuple:
        """Accuracy-aware INT8 (``exporting.sensitivity``): re-quantize the artifact at ``path`` with
        the fewest layers in float that meet the threshold. Returns (path, details, parity, runtime,
        float_layers)."""
        raise NotImplementedError(f"--accuracy-aware is not implemented for {self.format}")

    def runtime_options(self, job, mode: str) -> dict[str, Any]:
        """``open_backend`` options to run the artifact as the runtime will once its sidecar exists."""
        return {}

    @abstractmethod
    def io_names(self, path: Path) -> dict[str, dict[str, str | None]]:
        """Input and output names as this format's own client API reports them: ``name`` (the key a
        client passes) and ``tensor_name`` per side (TFLite adds ``signature``, ``signature_key``)."""

    def input_quantization(self, path: Path, mode: str, input_dtype: str) -> dict[str, float] | None:
        """Scale and zero point of a quantized input tensor (None: float or raw-pixel input)."""
        return None

    def sidecar_extras(self, path: Path, mode: str, input_dtype: str) -> dict[str, Any]:
        """What this format contributes to the sidecar (``exporting.sidecar``)."""
        names = self.io_names(path)
        return {"input_names": names["input"], "output_names": names["output"],
                "input_quantization": self.input_quantization(path, mode, input_dtype),
                "method": self.methods.get(mode)}

    @abstractmethod
    def embed(self, path: Path, described: dict[str, Any]) -> dict[str, Any]:
        """Write the description into the artifact in this format's own form (``embedded_metadata``);
        returns the output fields that changed (TFLite: a probabilities output 0, logits 1)."""
