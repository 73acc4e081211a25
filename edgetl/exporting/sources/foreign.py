"""What edgetl must be told, or must find out, about a model it did not train: preprocessing (stated,
never guessed), labels (given, checked against the output width) and the output kind (detected:
a trailing softmax in the graph, or rows that are probabilities on the check images)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import UsageError
from ...preprocess_presets import FLAGS

OUTPUT_KINDS = ("logits", "probabilities")
# Rows count as probabilities when each is >= 0 and sums to 1 within this (float32 softmax is ~1e-6).
SUM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ModelFacts:
    """Read cheaply from the model file: its static input size (None: dynamic) and input layout."""

    size: tuple[int, int] | None
    layout: str = "NHWC"


def require_stated(config) -> None:
    stated = config.preprocessing
    if stated is None or not stated.normalisation_given:
        raise UsageError(f"{config.model}: no {'edgetl.json' if config.model.suffix != '.onnx' else 'preprocessing'}"
                         f" and no preprocessing stated; pass {FLAGS} (see `edgetl export --help`)")
    stated.validate()
    if config.output_kind is not None and config.output_kind not in OUTPUT_KINDS:
        raise UsageError(f"--output-kind must be logits or probabilities, got {config.output_kind!r}")


def refuse_stated_for_edgetl_model(config) -> None:
    if config.preprocessing is not None and config.preprocessing.given:
        raise UsageError(f"{config.model} has edgetl.json, which already states its preprocessing; "
                         f"drop --preprocess/--mean/--std/--scale/--resize/--crop/--channel-order/--interpolation")


def labels(config, n_out: int) -> list[str]:
    """``--labels a,b,c`` or ``--labels FILE`` (one name a line); class_<i> when none; must fit the output."""
    given = list(config.labels or ())
    if len(given) == 1 and Path(given[0]).is_file():
        path = Path(given[0])
        try:
            given = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--labels {path}: cannot read ({exc})") from None
    names = given or [f"class_{i}" for i in range(n_out)]
    if len(names) != n_out:
        raise UsageError(f"{len(names)} labels given for a model with {n_out} outputs")
    if len(set(names)) != len(names):
        raise UsageError(f"--labels has duplicate names: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    return names


def rows_are_probabilities(outputs: np.ndarray) -> bool:
    outputs = np.asarray(outputs, np.float64)
    return bool(np.all(np.isfinite(outputs)) and outputs.min() >= 0.0
                and np.all(np.abs(outputs.sum(axis=-1) - 1.0) <= SUM_TOLERANCE))


def output_kind(graph_softmax: bool, outputs: np.ndarray, stated: str | None, where: str) -> tuple[str, str]:
    """(kind, how it was found). A stated ``--output-kind`` that the graph or the rows contradict is refused."""
    if graph_softmax:
        kind, why = "probabilities", "a softmax ends the graph"
    elif rows_are_probabilities(outputs):
        kind, why = "probabilities", f"every row on the {len(outputs)} check images is >= 0 and sums to 1"
    else:
        kind, why = "logits", "no trailing softmax and the rows are not probabilities"
    if stated and stated != kind:
        raise UsageError(f"--output-kind {stated} contradicts {where}: {why}")
    return kind, why
