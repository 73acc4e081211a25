"""What `edgetl search` explores: the configuration (``SearchConfig``) and its points.

A point is backbone x strategy x input size x sparsity x quantization x format; a trial is a point
benched on one target. The input size (``--input-sizes 224,176``) is the resolution the backbone is
fine-tuned and exported at: a smaller one costs accuracy and buys latency roughly as the pixel count
(Edge Impulse's EON Tuner searches it too); unset, each backbone runs at its own. Points come from the
grid of the command line's axes, overridden axis by axis by a ``--space`` JSON file, which may also list
extra ``points``:

    {"backbones": ["efficientnet_lite0", "mobilenet_v2"], "sparsity": [0, 0.5],
     "points": [{"backbone": "vgg19", "strategy": "features", "sparsity": 0, "quantize": "int8",
                 "format": "tflite"}]}

A point that cannot run (unknown name, sparsity outside [0, 1)) becomes a failed trial with its reason,
so one bad entry of a long space does not stop the others; the command refuses only when no point can
run at all.

A registered target (``npu:qnn-htp``, ``npu:ethos-u55-128``, ``gpu:cuda``, ...: ``edgetl targets``) fixes
the artifact format, and one compiled ahead for an NPU also its full-integer int8 quantization, so its
trials are the points as that target builds them (``for_target``), duplicates dropped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import targets as registry
from .. import zoo
from ..choices import Mode, PruneMethod, Strategy, values
from ..errors import UsageError

AXES = ("backbones", "strategies", "input_sizes", "sparsity", "quantize", "formats")
# A search point has one backbone: no stack; distill needs a teacher the search does not train.
STRATEGIES = (Strategy.FEATURES, Strategy.FREEZE, Strategy.FULL)
PRUNE_METHODS = values(PruneMethod)
SPACE_MAX_BYTES = 1 << 20  # a space lists axes and points: kilobytes; anything larger is a mistake


@dataclass(frozen=True)
class Point:
    backbone: str
    strategy: str
    sparsity: float
    quantize: str  # fp32 | fp16 | dynamic | int8
    format: str  # onnx | tflite | openvino
    input_size: int | None = None  # None: SearchConfig.input_size, else the backbone's own (no size in the name)

    @property
    def branch(self) -> str:
        """The fine-tuned model this point starts from: backbone / strategy [/ input size]."""
        size = f"/{self.input_size}px" if self.input_size else ""
        return f"{self.backbone}/{self.strategy}{size}"

    @property
    def name(self) -> str:
        return f"{self.branch}/sp{self.sparsity:g}/{self.format}/{self.quantize}"

    def problem(self) -> str | None:
        """Why this point cannot run, checked without TensorFlow (the backbone is checked by its
        fine-tune stage, where an unknown name fails as that trial's reason), or None."""
        from ..exporting import FORMATS, MODES
        from .given import GIVEN

        if self.strategy not in STRATEGIES and self.strategy != GIVEN:
            return f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}"
        if self.format not in FORMATS:
            return f"unknown format {self.format!r}; choose from {', '.join(FORMATS)}"
        if self.quantize not in MODES:
            return f"unknown quantization {self.quantize!r}; choose from {', '.join(MODES)}"
        if not 0.0 <= self.sparsity < 1.0:
            return f"sparsity must be in [0, 1), got {self.sparsity}"
        if self.input_size is not None and self.input_size < 1:
            return f"input size must be >= 1, got {self.input_size}"
        return None

    def finetune_size(self) -> int | None:
        """The input size the fine-tune stage is keyed on: None when it is the backbone's own, so a
        search naming 224 for efficientnet_lite0 reuses the fine-tune of one that names no size."""
        own = zoo.get(self.backbone).input_size if self.backbone in zoo.names() else None
        return None if self.input_size == own else self.input_size


@dataclass
class SearchConfig:
    data: Path
    out: Path
    targets: tuple[str, ...] = ("cpu",)
    backbones: tuple[str, ...] = (zoo.DEFAULT_BACKBONE,)
    strategies: tuple[str, ...] = ("features",)
    sparsity: tuple[float, ...] = (0.0,)
    quantize: tuple[str, ...] = ("fp32", "int8")
    formats: tuple[str, ...] = ("onnx",)
    epochs: int = 5
    prune_epochs: int | None = None  # recovery epochs after pruning; default: epochs
    prune_method: str = "structured"  # structured removes channels (faster); magnitude only zeros weights
    prune_lr: float | None = None  # recovery learning rate; default: PruneConfig's
    prune_importance: str | None = None  # structured channel ranking (l1 | bn); default: PruneConfig's
    prune_loss: str | None = None  # recovery loss (distill from the unpruned model | labels | features); default: PruneConfig's
    prune_patience: int | None = None  # recovery early stopping on val loss; default: PruneConfig's (off)
    weights: str = "imagenet"
    input_size: int | None = None  # every point's, unless input_sizes lists several
    input_sizes: tuple[int, ...] = ()  # an axis: fine-tune (and everything below) at each of these sizes
    batch_size: int = 16
    lr: float = 1e-3
    val_split: float = 0.2
    seed: int = 0
    runs: int = 30  # timed runs per artifact in each bench
    threads: int | None = None  # runtime threads in each bench (default: each runtime's own)
    max_latency_ms: float | None = None
    max_size_mb: float | None = None  # MB = 10^6 bytes
    max_drop: float | None = None  # accuracy points (percent) below the best FP32 fine-tuned model
    eta: int = 2  # successive halving: keep the top 1/eta of each rung (and every non-dominated branch)
    space: Path | None = None
    address: str | None = None  # join this Ray cluster; None: start Ray in-process on this machine
    num_cpus: int | None = None  # in-process Ray only; default: this machine's cores
    verbose: bool = True
    # --model (search/given.py): a bench-only search of this model over formats x quantization x targets;
    # a model without edgetl.json states its preprocessing, labels and output kind as `edgetl export` does.
    model: Path | None = None
    preprocessing: Any = None  # preprocess_presets.StatedPreprocessing
    labels: tuple[str, ...] = ()
    output_kind: str | None = None
    _points: list[Point] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self):
        self.data, self.out = Path(self.data), Path(self.out)
        self.space = Path(self.space) if self.space else None
        self.model = Path(self.model) if self.model else None
        self.labels = tuple(self.labels or ())
        self.targets = tuple(dict.fromkeys(t.strip() for t in self.targets if t and t.strip()))
        self.sparsity = tuple(float(s) for s in self.sparsity)
        self.input_sizes = tuple(int(s) for s in self.input_sizes)

    def validate(self) -> None:
        """Everything checkable before Ray starts and before any work."""
        from ..metadata import check_output_dir

        if not self.data.is_dir():
            raise UsageError(f"data folder {self.data} does not exist")
        if not self.targets:
            raise UsageError("no --target given (e.g. --target cpu)")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.runs < 1:
            raise UsageError("--epochs, --batch-size and --runs must be >= 1 and the learning rate > 0")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")
        if self.prune_epochs is not None and self.prune_epochs < 0:
            raise UsageError(f"--prune-epochs must be >= 0, got {self.prune_epochs}")
        if self.prune_lr is not None and self.prune_lr <= 0:
            raise UsageError(f"the recovery learning rate must be > 0, got {self.prune_lr}")
        from ..pruning.config import RECOVERY_LOSSES

        if self.prune_loss is not None and self.prune_loss not in RECOVERY_LOSSES:
            raise UsageError(f"unknown --prune-loss {self.prune_loss!r}; choose from {', '.join(RECOVERY_LOSSES)}")
        if self.prune_patience is not None and self.prune_patience < 0:
            raise UsageError(f"--prune-patience must be >= 0, got {self.prune_patience}")
        if self.prune_method not in PRUNE_METHODS:
            raise UsageError(f"unknown --prune-method {self.prune_method!r}; choose from {', '.join(PRUNE_METHODS)}")
        if self.eta < 1:
            raise UsageError(f"--eta must be >= 1 (1 keeps every branch), got {self.eta}")
        for name, value in (("--max-latency-ms", self.max_latency_ms), ("--max-size-mb", self.max_size_mb),
                            ("--max-drop", self.max_drop)):
            if value is not None and value < 0:
                raise UsageError(f"{name} must be >= 0, got {value}")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise UsageError(f"num_cpus must be >= 1, got {self.num_cpus}")
        for name in self.targets:
            _check_target(name)
        if self.model is not None:
            from . import given

            given.validate(self)
        check_output_dir(self.out, inputs=(self.data, self.space, self.model))
        _check_search_output(self.out)
        points = self.points()
        if "backbones" not in (_read_space(self.space)[0] if self.space else {}):
            for backbone in self.backbones:  # named on the command line: a typo is an error, not a trial
                zoo.get(backbone)
        if not any(p.problem() is None for p in points):
            raise UsageError(f"no point of the search space can run: {points[0].name}: {points[0].problem()}"
                             if points else "the search space is empty")

    def points(self) -> list[Point]:
        if not self._points:
            axes, extra = _read_space(self.space) if self.space else ({}, [])
            if self.model is not None:
                from . import given

                self._points = list(dict.fromkeys(given.points(self, axes, extra)))
                return self._points
            # Without the axis a point names no size (the fine-tune then takes --input-size, keyed as before).
            own = {"input_sizes": self.input_sizes or (None,)}
            grid = {axis: axes.get(axis, own.get(axis) or getattr(self, axis)) for axis in AXES}
            points = [Point(b, s, float(sp), q, f, size) for b in grid["backbones"] for s in grid["strategies"]
                      for size in grid["input_sizes"] for sp in grid["sparsity"] for q in grid["quantize"]
                      for f in grid["formats"]]
            self._points = list(dict.fromkeys([*points, *extra]))
        return self._points

    def trials(self) -> list[tuple[Point, str]]:
        """(point, target) of every trial: each runnable point as its target builds it."""
        pairs = [(p if p.problem() else for_target(p, t), t) for p in self.points() for t in self.targets]
        return list(dict.fromkeys(pairs))

    def cores(self) -> int:
        if self.num_cpus:
            return self.num_cpus
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            return os.cpu_count() or 1


def registered(target: str) -> bool:
    """A target named in edgetl.targets (``npu:qnn-htp``) rather than a device kind (``cpu``/``gpu``/``npu``):
    exported with ``export --target`` and benched with ``bench --target``, as the CLI does."""
    return target not in registry.KINDS


def for_target(point: Point, target: str) -> Point:
    """The point as ``target`` builds it: a registered target fixes the format, one compiled ahead
    (QNN context binary, Vela) also the int8 quantization; cpu/gpu/npu take the point as it is."""
    if not registered(target):
        return point
    spec = registry.get(target)
    quantize = Mode.INT8.value if spec.compiled_ahead else point.quantize
    return dataclasses.replace(point, format=spec.artifact.format, quantize=quantize)


def _check_search_output(out: Path) -> None:
    """A search resumes only its own folder: any other non-empty edgetl output (a model folder, a bench
    report) is refused as every verb refuses an output that is not its own."""
    from ..metadata import read_output_marker

    try:
        empty = not out.is_dir() or not any(out.iterdir())
    except OSError:
        return  # check_output_dir said why already, or the folder is gone
    verb = (read_output_marker(out) or {}).get("verb")
    if not empty and verb != "search":
        from ..metadata import MODEL_METADATA

        what = (f"the output of `edgetl {verb}`" if verb else "a model (edgetl.json)"
                if (out / MODEL_METADATA).is_file() else "edgetl output of another command")
        raise UsageError(f"--out {out} holds {what}, not a search's; a search resumes only its own folder: "
                         f"choose a new or empty folder")


def _check_target(name: str) -> None:
    if not registered(name):
        return
    spec = registry.get(name)  # an unknown name: one UsageError line naming `edgetl targets`
    from ..exporting import FORMATS

    if spec.artifact.format not in FORMATS:
        raise UsageError(f"--target {name} runs the {spec.artifact.format} model itself; a search benches "
                         f"exported artifacts (formats: {', '.join(FORMATS)})")


def _read_space(path: Path) -> tuple[dict[str, list], list[Point]]:
    """Axes and extra points of a --space JSON file (one-line UsageError when it is malformed)."""
    try:
        document = json.loads(_read_capped(Path(path)))
    except OSError as exc:
        raise UsageError(f"--space {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"--space {path} is not valid JSON ({exc})") from None
    except RecursionError:  # thousands of nested brackets: Python's parser gives up, no space nests so
        raise UsageError(f"--space {path} is not valid JSON (nested too deeply)") from None
    if not isinstance(document, dict):
        raise UsageError(f"--space {path} must hold a JSON object with {', '.join(AXES)} and/or points")
    unknown = set(document) - {*AXES, "points"}
    if unknown:
        raise UsageError(f"--space {path}: unknown key {sorted(unknown)[0]!r}; keys: {', '.join(AXES)}, points")
    axes: dict[str, list] = {}
    for axis in AXES:
        if axis in document:
            values = document[axis]
            if not isinstance(values, list) or not values:
                raise UsageError(f"--space {path}: {axis} must be a non-empty list")
            axes[axis] = [_number(v, path) if axis == "sparsity" else _size(v, path) if axis == "input_sizes"
                          else str(v) for v in values]
    points = [_point(entry, path) for entry in document.get("points") or []]
    return axes, points


def _read_capped(path: Path) -> str:
    """The text of a regular file of at most SPACE_MAX_BYTES: a FIFO, a device (/dev/zero) or a huge
    file is refused from its stat, before anything is read (open() of a FIFO alone would block)."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"--space {path} is not a regular file (a FIFO, device or folder); give a JSON file")
    if info.st_size > SPACE_MAX_BYTES:
        raise UsageError(f"--space {path} is {info.st_size} bytes; a search space file is at most "
                         f"{SPACE_MAX_BYTES // 1024} KiB")
    with open(path, "rb") as handle:
        data = handle.read(SPACE_MAX_BYTES + 1)  # the file may have grown since its stat
    if len(data) > SPACE_MAX_BYTES:
        raise UsageError(f"--space {path} is over {SPACE_MAX_BYTES // 1024} KiB; a search space file is not")
    return data.decode("utf-8")


def _number(value: Any, path: Path) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--space {path}: sparsity {value!r} is not a number") from None
    if not math.isfinite(number):
        raise UsageError(f"--space {path}: sparsity {value!r} is not a finite number")
    return number


def _size(value: Any, path: Path) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"--space {path}: input size {value!r} is not an integer") from None


def _point(entry: Any, path: Path) -> Point:
    keys = ("backbone", "strategy", "sparsity", "quantize", "format", "input_size")
    if not isinstance(entry, dict) or set(entry) - set(keys):
        raise UsageError(f"--space {path}: each point is an object with keys {', '.join(keys)}")
    return Point(str(entry.get("backbone", zoo.DEFAULT_BACKBONE)), str(entry.get("strategy", "features")),
                 _number(entry.get("sparsity", 0), path), str(entry.get("quantize", "fp32")),
                 str(entry.get("format", "onnx")),
                 None if entry.get("input_size") is None else _size(entry["input_size"], path))

