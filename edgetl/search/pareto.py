"""Pareto fronts, the successive-halving rule between stages, and the winner under constraints.

Objectives: accuracy up, latency down, size down. Between stages (rungs) the search only knows a
model's validation accuracy and its parameter count, so a branch is stopped at a rung when it is
dominated on those two (another branch is at least as accurate and at most as large, and better in
one) and it ranks outside the top ``ceil(n / eta)`` of the rung; every non-dominated branch goes on.

Latency of finished trials: each bench times the target's anchor artifact in the same rounds as the
trial's own, so fronts and winners rank on ``latency_vs_anchor`` (the paired ratio; absolute p50 stays
in trials.json) whenever every trial of the target has it; else on ``latency_p50_ms``.

``--max-drop`` with the accuracy interval: a trial is within the drop unless its val images show it is
not: the upper end of its top-1's Wilson 95% interval must reach ``baseline - max_drop`` (the baseline,
the best fine-tuned model's val accuracy, is taken as given). On a small val set a trial one photo
below the floor is therefore kept, and the front shows its interval; one clearly below is not.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

# (key, sense): +1 maximise, -1 minimise
TRIAL_OBJECTIVES = (("top1", +1), ("latency_p50_ms", -1), ("size_bytes", -1))
RUNG_OBJECTIVES = (("val_accuracy", +1), ("params", -1))


def latency_key(rows: Sequence[dict[str, Any]]) -> str:
    """``latency_vs_anchor`` when every row has one (all timed against the target's anchor), else p50."""
    return "latency_vs_anchor" if rows and all(r.get("latency_vs_anchor") is not None for r in rows) \
        else "latency_p50_ms"


def trial_objectives(rows: Sequence[dict[str, Any]]) -> tuple:
    """TRIAL_OBJECTIVES with the latency these rows can be compared on (``latency_key``)."""
    return tuple((latency_key(rows) if key == "latency_p50_ms" else key, sense) for key, sense in TRIAL_OBJECTIVES)


def top1_upper(row: dict[str, Any]) -> float | None:
    """The upper end of the top-1's 95% interval (the top-1 itself where no interval was recorded)."""
    return row.get("top1_high") if row.get("top1_high") is not None else row.get("top1")


def dominates(a: dict[str, Any], b: dict[str, Any], objectives=TRIAL_OBJECTIVES) -> bool:
    """``a`` is no worse than ``b`` on every objective and better on one."""
    better = False
    for key, sense in objectives:
        x, y = sense * _value(a, key, sense), sense * _value(b, key, sense)
        if x < y:
            return False
        better = better or x > y
    return better


def _value(row: dict[str, Any], key: str, sense: int) -> float:
    value = row.get(key)
    return float(value) if value is not None else (-math.inf if sense > 0 else math.inf)


def front(rows: Sequence[dict[str, Any]], objectives=TRIAL_OBJECTIVES) -> list[dict[str, Any]]:
    """The non-dominated rows, in the order given."""
    return [r for r in rows if not any(dominates(o, r, objectives) for o in rows if o is not r)]


def ranks(rows: Sequence[dict[str, Any]], objectives=TRIAL_OBJECTIVES) -> list[int]:
    """Non-dominated sorting: 0 for the front, 1 for the front of the rest, ..."""
    remaining = list(range(len(rows)))
    rank = [0] * len(rows)
    level = 0
    while remaining:
        layer = [i for i in remaining
                 if not any(dominates(rows[j], rows[i], objectives) for j in remaining if j != i)]
        for i in layer:
            rank[i] = level
        remaining = [i for i in remaining if i not in layer]
        level += 1
    return rank


def halving(candidates: Sequence[dict[str, Any]], eta: int) -> dict[str, str]:
    """Successive halving at one rung: ``{id: reason}`` of the candidates to stop (each has ``id``,
    ``val_accuracy``, ``params``). Deterministic, so a resumed search stops the same branches."""
    n = len(candidates)
    if n < 2 or eta <= 1:
        return {}
    rank = ranks(candidates, RUNG_OBJECTIVES)
    order = sorted(range(n), key=lambda i: (rank[i], -_value(candidates[i], "val_accuracy", +1),
                                            _value(candidates[i], "params", -1), candidates[i]["id"]))
    keep = math.ceil(n / eta)
    kept = set(order[:keep])
    stopped = {}
    for i in order[keep:]:
        if rank[i] == 0:
            continue  # on the rung's front: it may still be the best trade-off
        c = candidates[i]
        by = next(o for o in candidates if dominates(o, c, RUNG_OBJECTIVES))
        stopped[c["id"]] = (f"dominated at the {c.get('rung', 'rung')} by {by['id']} (val accuracy "
                            f"{_fmt(by.get('val_accuracy'))} vs {_fmt(c.get('val_accuracy'))}, params "
                            f"{by['params']} vs {c['params']}) and outside the top {len(kept)} of {n}")
    return stopped


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def winner(rows: Sequence[dict[str, Any]], baseline_top1: float | None, max_latency_ms: float | None = None,
           max_size_mb: float | None = None, max_drop: float | None = None) -> tuple[dict | None, str]:
    """The fastest trial meeting the constraints (ties: smaller, then more accurate), and why."""
    limits = []
    eligible = list(rows)
    if max_drop is not None and baseline_top1 is not None:
        floor = baseline_top1 - max_drop / 100 - 1e-9
        eligible = [r for r in eligible if r["top1"] is not None and top1_upper(r) >= floor]
        limits.append(f"top-1 >= {baseline_top1:.1%} - {max_drop:g} points (upper end of its 95% interval)")
    if max_latency_ms is not None:  # a latency not measured (a simulator's run) cannot be shown to meet it
        eligible = [r for r in eligible if r["latency_p50_ms"] is not None and r["latency_p50_ms"] <= max_latency_ms]
        limits.append(f"p50 <= {max_latency_ms:g} ms")
    if max_size_mb is not None:
        eligible = [r for r in eligible if r["size_bytes"] <= max_size_mb * 1e6]
        limits.append(f"size <= {max_size_mb:g} MB")
    rule = ", ".join(limits) or "no constraints"
    if not eligible:
        return None, f"no finished trial meets {rule}"
    latency = latency_key(rows)
    best = min(eligible, key=lambda r: (_value(r, latency, -1), r["size_bytes"], -(r["top1"] or 0.0),
                                        r["trial"]))
    timed = [r.get("latency_evidence") or "measured" for r in eligible if r["latency_p50_ms"] is not None]
    if not timed:
        return best, f"smallest finished trial with {rule} (no latency measured on this target)"
    labels = sorted(set(timed))
    relative = " relative to the target's anchor" if latency == "latency_vs_anchor" else ""
    return best, f"fastest{relative} finished trial with {rule}" + ("" if labels == ["measured"] else
                                                                       f" (latency {'/'.join(labels)})")
