"""What `edgetl prune` takes (``PruneConfig``) and gives back (``PruneResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..choices import PruneMethod, choose
from ..errors import UsageError
from ..metadata import MODEL_FILE, MODEL_METADATA, check_output_dir, read_json, read_model_card
from .structured import CHANNEL_MULTIPLE

RECOVERY_LOSSES = ("labels", "distill", "features")


@dataclass
class PruneConfig:
    model_dir: Path
    out: Path
    method: str = PruneMethod.MAGNITUDE
    sparsity: float = 0.5
    schedule: str = "polynomial"  # magnitude only: constant | polynomial
    importance: str = "l1"  # structured only: l1 | bn
    channel_multiple: int = CHANNEL_MULTIPLE  # structured: kept channels rounded up to a multiple (1 = none)
    data: Path | None = None  # default: the data set the model was trained on
    epochs: int = 2  # recovery fine-tuning; 0 = prune only
    batch_size: int = 16
    lr: float = 1e-4
    # Recovery loss: labels (cross-entropy) | distill (Hinton KD from the unpruned model, the natural
    # teacher, with training/distill.py's loss; temperature and weight as `finetune --strategy distill`)
    # | features (structured: match the unpruned model's pooled features, weight = distill_weight).
    # distill by default: lite0 50% structured, 1 epoch, the whole backbone recovering: INT8 agreement
    # 49/49 in ONNX, TFLite and OpenVINO (cosine 0.996 / 0.994 / 0.998), against 48/49 in all three
    # with labels (0.992 / 0.991 / 0.992) - the hard labels push the val photos' logits around more than
    # the INT8 grid can follow (tools/RESULTS-accuracy.md, "B3").
    recovery_loss: str = "distill"
    temperature: float = 2.0
    distill_weight: float = 0.5
    patience: int = 0  # recovery: stop after this many epochs without a lower val loss, keep the best; 0 = off
    reconstruct: bool = True  # structured: least-squares refit of the projections to the original outputs
    # structured: re-estimate BN statistics on the training images. Off by default: on small data sets it
    # trades ImageNet-wide statistics for a few hundred images (lite0 on 195 photos: 92% -> 57%).
    recalibrate_bn: bool = False
    min_params: int = 1000  # magnitude: kernels smaller than this stay dense
    prune_classifier: bool = False  # magnitude: the final Dense (logits) stays dense by default
    sweep: tuple[float, ...] = ()
    overwrite: bool = True
    verbose: bool = True

    def __post_init__(self):
        self.model_dir, self.out = Path(self.model_dir), Path(self.out)
        self.data = Path(self.data) if self.data else None
        self.sweep = tuple(float(v) for v in self.sweep)

    def validate(self) -> None:
        from .magnitude import SCHEDULES
        from .structured import IMPORTANCE

        self.method = choose(PruneMethod, self.method, "pruning method")
        for value in (self.sparsity, *self.sweep):
            if not 0.0 < value < 1.0:
                raise UsageError(f"sparsity must be strictly between 0 and 1, got {value}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.importance not in IMPORTANCE:
            raise UsageError(f"unknown importance {self.importance!r}; choose one of {', '.join(IMPORTANCE)}")
        if self.recovery_loss not in RECOVERY_LOSSES:
            raise UsageError(f"unknown recovery loss {self.recovery_loss!r}; choose one of {', '.join(RECOVERY_LOSSES)}")
        if self.recovery_loss == "features" and self.method != PruneMethod.STRUCTURED:
            raise UsageError("recovery loss 'features' is for structured pruning (magnitude: labels or distill)")
        if not 0.0 <= self.distill_weight <= 1.0 or self.temperature <= 0 or self.patience < 0:
            raise UsageError("the distill weight must be in [0, 1], the temperature > 0 and the patience >= 0")
        if self.channel_multiple < 1:
            raise UsageError(f"the channel multiple must be >= 1 (1: no rounding), got {self.channel_multiple}")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise UsageError("epochs must be >= 0, batch size >= 1 and the learning rate > 0")
        if not Path(self.model_dir).is_dir():
            raise UsageError(f"model directory {self.model_dir} does not exist")
        read_model_card(self.model_dir)  # missing, not JSON, or lacking fields: one line, before TensorFlow
        if not (self.model_dir / MODEL_FILE).is_file():
            raise UsageError(f"{self.model_dir}: no {MODEL_FILE} to prune")
        from ..training import check_keras_file

        check_keras_file(self.model_dir / MODEL_FILE)
        check_output_dir(self.out, self.inputs(), self.overwrite)

    def inputs(self) -> tuple[Path | None, ...]:
        """What --out may not be, hold or lie inside: the model and the recovery data."""
        data = self.data
        if data is None:
            try:
                data = (read_json(self.model_dir / MODEL_METADATA).get("dataset") or {}).get("root")
            except (OSError, ValueError, AttributeError):
                data = None
        return (self.model_dir, data)


@dataclass
class PruneResult:
    model_dir: Path
    record: dict[str, Any]
    model: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def val_accuracy(self) -> float | None:
        return self.record.get("accuracy", {}).get("after_recovery")
