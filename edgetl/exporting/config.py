"""``ExportConfig``: what one ``export`` call makes, validated before TensorFlow loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..choices import CalibrationMethod, Format, InputDtype, Int8Weights, Mode, choose
from ..errors import UsageError
from ..metadata import MODEL_METADATA, check_output_dir, read_json
from ..preprocess_presets import StatedPreprocessing
from . import formats


def _as_tuple(value: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    return tuple(dict.fromkeys(v.strip().lower() for v in value if v and v.strip()))


@dataclass
class ExportConfig:
    model: Path | None = None  # model directory (model.keras + edgetl.json), .keras file, SavedModel dir or .onnx
    out: Path | None = None
    formats: tuple[str, ...] = ("onnx",)
    modes: tuple[str, ...] = ("fp32",)  # "none" is accepted for fp32 (what other stages call it)
    input_dtypes: tuple[str, ...] = ("float32",)  # "uint8": normalisation in the graph, raw pixels in
    calib: Path | None = None  # image folder (labels not needed); required for int8
    calib_size: int = 300
    calib_method: str = "minmax"  # ORT ranges: minmax | entropy | percentile (TFLite/NNCF use their own)
    check: Path | None = None  # --check: held-back images for parity (default: the model's val split)
    min_agreement: float = 0.98
    accuracy_aware: bool = False
    qat_epochs: int = 0  # int8: quantization-aware fine-tuning on the calibration images first (exporting/qat.py)
    # int8 weights for ONNX and OpenVINO: auto | full | pair-safe | 7-bit (see exporting/pairs.py)
    int8_weights: str = "auto"
    # the CPU the artifacts are made for: any | vnni | no-vnni | arm | this (see exporting/pairs.py)
    target_cpu: str = "any"
    # INT8 post-training fixes: each layer's bias corrected for the mean shift its rounded (and
    # pair-bounded) weights cause (exporting/bias_correction.py), in every format; TFLite also keeps
    # the classifier head in float. False: the converters' plain INT8.
    bias_correction: bool = True
    opset: int = 17
    static_batch: int | None = None  # a fixed batch size in the artifacts (benchmark_app, NPU compilers)
    input_size: int | None = None  # for models without edgetl.json
    labels: tuple[str, ...] = ()  # class names, or one path to a labels file (one name a line)
    # A model without edgetl.json: how it wants its pixels (``preprocess_presets``), and optionally
    # what it outputs (logits | probabilities; detected and checked against this: ``sources.foreign``).
    preprocessing: StatedPreprocessing | None = None
    output_kind: str | None = None
    overwrite: bool = True
    verbose: bool = True
    # --target (edgetl.targets): what that target runs instead of --format/--quantize (exporting/target.py)
    target: str | None = None
    soc: str | None = None  # npu:qnn-htp: Snapdragon to compile the EPContext model for (exporting/qnn.py)
    qnn_scheme: str = "edgetl"  # exporting/qnn.py QNN_SCHEMES
    system_config: str | None = None  # npu:ethos-u*: Vela system config / memory mode (default: Vela's)
    memory_mode: str | None = None
    allow_cpu_fallback: bool = False  # ops the NPU cannot take: an error unless allowed

    def __post_init__(self):
        if self.model is None or self.out is None:
            raise UsageError("export needs a model (model directory, .keras file, SavedModel directory or "
                             ".onnx file) and an output folder")
        self.model, self.out = Path(self.model), Path(self.out)
        self.formats, self.modes = _as_tuple(self.formats), _as_tuple(self.modes)
        self.modes = tuple(dict.fromkeys(Mode.FP32.value if m == "none" else m for m in self.modes))
        self.input_dtypes = tuple(InputDtype.UINT8.value if d in ("u8", "uint8") else d
                                  for d in _as_tuple(self.input_dtypes))
        self.calib = Path(self.calib) if self.calib else None
        self.check = Path(self.check) if self.check else None
        self.labels = tuple(self.labels or ())

    def validate(self) -> None:
        """Everything checkable without TensorFlow, before anything is written."""
        from . import sources
        from .pairs import TARGET_CPUS

        for kind, values, choices in (("format", self.formats, Format), ("mode", self.modes, Mode),
                                      ("input dtype", self.input_dtypes, InputDtype)):
            if not values:
                raise UsageError(f"no {kind} given; choose from {', '.join(m.value for m in choices)}")
            for value in values:
                choose(choices, value, kind)
        support = formats.supported_modes()
        for fmt in self.formats:
            for mode in self.modes:
                if mode not in support.get(fmt, ()):
                    able = [f for f in formats.FORMATS if mode in support[f]]
                    raise UsageError(f"--quantize {mode} is not supported for {fmt} here; "
                                     f"formats that support it: {', '.join(able)}")
        choose(CalibrationMethod, self.calib_method, "calibration method")
        choose(Int8Weights, self.int8_weights, "--int8-weights")
        if self.target_cpu not in TARGET_CPUS:
            raise UsageError(f"unknown --target-cpu {self.target_cpu!r}; choose from {', '.join(TARGET_CPUS)}")
        if Mode.INT8 in self.modes and self.calib is None:
            raise UsageError("--quantize int8 needs calibration images: pass --calib DIR "
                             "(a few hundred representative images, labels not needed)")
        if self.qat_epochs:
            self.validate_qat()
        if not 0.0 < self.min_agreement <= 1.0:
            raise UsageError(f"--min-agreement must be in (0, 1], got {self.min_agreement}")
        if self.static_batch is not None and self.static_batch < 1:
            raise UsageError(f"--static-batch must be >= 1, got {self.static_batch}")
        if self.calib_size < 1:
            raise UsageError(f"--calib-size must be >= 1, got {self.calib_size}")
        if self.check is not None and not self.check.is_dir():
            raise UsageError(f"--check folder {self.check} does not exist")
        sources.validate(self)
        check_output_dir(self.out, self.inputs(), self.overwrite)

    def validate_qat(self) -> None:
        if self.qat_epochs < 0:
            raise UsageError(f"--qat-epochs must be >= 0, got {self.qat_epochs}")
        if Mode.INT8 not in self.modes:
            raise UsageError("--qat-epochs fine-tunes for --quantize int8; add -q int8")
        if InputDtype.UINT8 in self.input_dtypes:
            raise UsageError("--qat-epochs makes float32-input artifacts only; drop --input-dtype uint8")
        if self.accuracy_aware:
            raise UsageError("--qat-epochs and --accuracy-aware are alternatives; choose one")
        if self.target and self.target != "cpu":
            raise UsageError("--qat-epochs is for the CPU formats (--format), not --target")

    def inputs(self) -> tuple[Path | None, ...]:
        """What --out may not be, hold or lie inside: the model (its directory), calibration and check
        folders, and the data set whose val split parity reads."""
        dataset_root = None
        meta = (self.model if self.model.is_dir() else self.model.parent) / MODEL_METADATA
        if self.model.is_dir() and meta.is_file() and not (self.model / "saved_model.pb").exists():
            try:
                dataset_root = (read_json(meta).get("dataset") or {}).get("root")
            except (OSError, ValueError, AttributeError):
                pass
        return (self.model, self.calib, self.check, dataset_root)
