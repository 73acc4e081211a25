"""Latency measurement shared by bench, the prune sweep, the sensitivity ranking and tools/.

One timer (``time_runs``), one interleaved comparison (``interleaved``: candidates take turns round by
round, so a drift in machine load hits each of them alike), one set of statistics, the ratio of two
candidates timed in the same rounds with its bootstrap interval (``paired_ratio``) and one check of
what the timing loop itself costs (``harness_overhead``).

Why settled blocks (``settled_rounds``): a runtime's worker threads go to sleep while the others take
their turn, and on a loaded machine waking them costs a scheduler wait that a runtime running back to
back never pays (edgetl's OpenVINO INT8 p50 read 3.5x benchmark_app's with one call per turn). So each
turn is one untimed call that wakes the threads, then a short block of timed calls.

Why paired rounds: on a shared machine the load swings over seconds, so two candidates timed one
after the other can differ by 3x while timed in alternation they keep their ratio. The ratio of two
candidates is the median over rounds of their per-round ratio; its 95% interval is a percentile
bootstrap over rounds (seeded: the same times give the same interval). Two candidates "separate" when
that interval excludes 1; otherwise they are within noise of each other.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

TIMING_KEYS = ("min", "p50", "p90", "p99", "mean", "std")
OVERHEAD_TARGET_PCT = 3.0
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def timing_stats(times_ms: Sequence[float]) -> dict[str, float]:
    values = np.asarray(times_ms, np.float64)
    return {
        "min": float(values.min()),
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
    }


def time_runs(run: Callable[[], Any], runs: int, warmup: int = 0) -> list[float]:
    """Warm-up, then ``runs`` timed calls in milliseconds; only the call sits between the two clock reads."""
    for _ in range(warmup):
        run()
    times = [0] * runs
    clock = time.perf_counter_ns
    for i in range(runs):
        start = clock()
        run()
        times[i] = clock() - start
    return [t / 1e6 for t in times]


def interleaved(runners: Mapping[str, Callable[[], Any]], rounds: int, runs_per_round: int = 1,
                warmup: int = 1) -> dict[str, list[float]]:
    """Milliseconds per call of each runner, measured in alternating rounds (every runner warmed up
    first), so ratios between them come from one shared stretch of machine time."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            times[name].extend(time_runs(run, runs_per_round))
    return times


ROUND_BLOCK = 2  # timed calls per runner per round (after one untimed settling call)


def settled_rounds(runners: Mapping[str, Callable[[], Any]], runs: int, block: int = ROUND_BLOCK,
                   warmup: int = 1) -> dict[str, list[list[float]]]:
    """``runs`` timed calls of each runner (ms), per round: every runner warmed up first, then rounds in
    which each runner in turn makes one untimed settling call and ``block`` timed ones (the last round
    the remainder), so round ``i`` of every runner shares one stretch of machine time."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    rounds: dict[str, list[list[float]]] = {name: [] for name in runners}
    done = 0
    while done < runs:
        size = min(block, runs - done)
        for name, run in runners.items():
            rounds[name].append(time_runs(run, size, warmup=1))
        done += size
    return rounds


def round_medians(rounds: Sequence[Sequence[float]]) -> list[float]:
    """Each round's median: what ``paired_ratio`` pairs."""
    return [float(np.median(r)) for r in rounds]


def median_ms(runners: Mapping[str, Callable[[], Any]], rounds: int, runs_per_round: int = 1,
              warmup: int = 1) -> dict[str, float]:
    """``interleaved`` reduced to each runner's median."""
    return {name: float(np.median(values))
            for name, values in interleaved(runners, rounds, runs_per_round, warmup).items()}


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float], confidence: float = 0.95,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """``numerator / denominator`` for two candidates timed in the same rounds (round ``i`` of each is
    entry ``i``): the median per-round ratio and its bootstrap interval over rounds. With the baseline
    as numerator this is a speed-up (> 1: the candidate is faster)."""
    a, b = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired_ratio needs the same rounds for both candidates ({a.size} vs {b.size})")
    ratios = a / b
    rng = np.random.default_rng(seed)
    medians = np.median(ratios[rng.integers(0, ratios.size, (resamples, ratios.size))], axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return {"ratio": float(np.median(ratios)), "low": float(low), "high": float(high),
            "rounds": int(ratios.size), "confidence": confidence, "separates": bool(low > 1 or high < 1)}


def harness_overhead(run: Callable[[], Any], runs: int, rounds: int = 5) -> dict[str, Any]:
    """Bare ``run()`` loop vs the timing loop on the same artifact. Rounds alternate and the fastest
    round of each is kept, so a noisy neighbour on a shared CPU reads as little as possible as harness
    overhead. ``bookkeeping_pct`` is the time the timing loop spends outside the timed calls."""
    bare, timed, inside = [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(runs):
            run()
        bare.append(time.perf_counter() - start)
        start = time.perf_counter()
        times = time_runs(run, runs, 0)
        timed.append(time.perf_counter() - start)
        inside.append(sum(times) / 1e3)
    overhead = (min(timed) - min(bare)) / min(bare) * 100
    bookkeeping = min((t - i) / i for t, i in zip(timed, inside)) * 100
    return {"bare_loop_ms": min(bare) * 1e3, "timed_loop_ms": min(timed) * 1e3, "runs": runs,
            "rounds": rounds, "overhead_pct": overhead, "bookkeeping_pct": bookkeeping,
            "target_pct": OVERHEAD_TARGET_PCT, "within_target": overhead < OVERHEAD_TARGET_PCT}


def machine_summary() -> str:
    """One line for a results file: CPU model, usable cores and the INT8-relevant ISA flags present
    (read from /proc/cpuinfo by ``runtime.cpu``, never assumed)."""
    import os

    from .runtime.cpu import cpu_model_and_flags, isa_flags

    model, flags = cpu_model_and_flags()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    present = [name for name, has in isa_flags(flags).items() if has]
    return f"{model}, {cores} usable cores, ISA: {' '.join(present) or 'none of the INT8 flags'}"
