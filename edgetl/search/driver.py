"""`edgetl search`: the driver. Ray schedules; this module only decides what to build next.

Rungs: every fine-tune, then (successive halving) every prune of the surviving branches, then
(halving again) export and, as each artifact lands, its bench on every target. A bench asks for the
custom resource ``target:<name>`` so it runs only on a node that offers it; fine-tunes and prunes ask
for a GPU when the cluster has one. A stage that raises, runs out of memory or loses its worker fails
the trials below it and the search goes on. Stages finished in an earlier run (same keys, intact
files) are read back without a Ray task, which is what makes a rerun after a killed driver resume.
With Ray in-process, a registered target this machine has no device, simulator or compiler for fails
its trials before any work (on a cluster the node offering it decides, in its stages).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import DeviceUnavailable, UsageError
from ..metadata import OUTPUT_MARKER, atomic_directory, output_marker, write_json
from ..pruning.structured import CHANNEL_MULTIPLE
from ..stages import content_key, materialise_split, reuse_or_build
from .joining import join_failure, probe_gcs, check_token, use_token
from .pareto import halving
from .progress import Progress
from .space import Point, SearchConfig, registered
from .stages import (EVIDENCE_KEYS, NPU_KEYS, StageJob, bench_job, describe, export_job, finetune_job, prune_job,
                     run_stage, target_resource, unavailable_targets)

OBJECT_STORE_BYTES = 256 * 1024 * 1024  # only small dicts travel through it; spare the shared /dev/shm
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}


@dataclass
class Trial:
    point: Point
    target: str
    status: str = "pending"  # pending | done | failed | pruned
    reason: str | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> describe() + reused/job

    @property
    def id(self) -> str:
        return f"{self.point.name}@{self.target}"

    def record(self) -> dict[str, Any]:
        bench = self.stages.get("bench") or {}
        return {"trial": self.id, "target": self.target, **vars(self.point), "status": self.status,
                "reason": self.reason,
                **{k: bench.get(k) for k in ("top1", "top1_low", "top1_high", "latency_p50_ms", "latency_p90_ms",
                                             "latency_vs_anchor", "latency_vs_anchor_low", "latency_vs_anchor_high",
                                             "anchor", "size_bytes", "agreement", "reference_top1", "node", "device",
                                             *EVIDENCE_KEYS)},
                **{k: bench[k] for k in NPU_KEYS if k in bench},
                "stages": self.stages}


@dataclass
class SearchResult:
    out: Path
    trials: list[Trial]
    fronts: dict[str, list[dict[str, Any]]]
    winners: dict[str, dict[str, Any]]
    baseline_top1: float | None
    seconds: float
    built: int  # stages built in this run (0 on a rerun that had everything)
    reused: int
    markdown: str = ""

    def counts(self) -> dict[str, int]:
        return {s: sum(t.status == s for t in self.trials) for s in ("done", "failed", "pruned")}


def search(config: SearchConfig) -> SearchResult:
    from .results import write_results

    config.validate()
    started = time.perf_counter()
    trials = [Trial(p, t) for p, t in config.trials()]
    for trial in trials:
        problem = trial.point.problem()
        if problem:
            trial.status, trial.reason = "failed", f"bad config: {problem}"
    if not config.address:  # in-process Ray: this machine is the node every bench lands on
        missing = unavailable_targets(config.targets)
        if set(missing) == set(config.targets):  # nothing could be benched: say so before Ray starts
            raise DeviceUnavailable(missing[config.targets[0]].removeprefix("target: DeviceUnavailable: "))
        for target, reason in missing.items():
            for trial in trials:
                if trial.target == target and trial.status == "pending":
                    trial.status, trial.reason = "failed", reason
    train, val = _load_splits(config)  # unusable images, one class: before Ray and before --out exists
    with ray_session(config) as placement:  # a cluster that is not there fails before --out is written
        out = config.out
        out.mkdir(parents=True, exist_ok=True)
        if not (out / OUTPUT_MARKER).exists():
            write_json(out / OUTPUT_MARKER, output_marker("search"))
        splits, split_key = _splits(config, train, val)
        runner = _Runner(config, trials)
        try:
            _search(config, trials, runner, splits, split_key, placement)
        finally:
            runner.progress.close()
    return write_results(config, trials, time.perf_counter() - started, runner.built,
                         len(runner.reused_dirs))


def _load_splits(config: SearchConfig):
    from ..data import load_splits

    train, val = load_splits(config.data, config.val_split, config.seed)
    if not len(val):
        raise UsageError("the validation split is empty; raise the validation fraction or add images")
    return train, val


def _splits(config: SearchConfig, train, val) -> tuple[Path, str]:
    """The train/val split, materialised once in the driver, keyed like `edgetl run`'s."""
    key = content_key({"train": train.fingerprint()["fingerprint"], "val": val.fingerprint()["fingerprint"],
                       "classes": train.classes})
    directory = config.out / "stages" / "data" / key[:16]

    def write(d: Path) -> None:
        with atomic_directory(d, inputs=(config.data,), verb="search") as tmp:
            materialise_split(train, tmp / "train")
            materialise_split(val, tmp / "val")

    reuse_or_build("splits", directory, key, write, verbose=False)
    return directory, key


def _search(config: SearchConfig, trials: list[Trial], runner: "_Runner", splits: Path, split_key: str,
            placement: "Placement") -> None:
    gpus = placement.gpus

    def export_and_bench(live: list[Trial], models: dict[str, Path], foreign: dict[str, Any] | None = None) -> None:
        """Rung 3: export each artifact; as one lands, bench it on its target."""
        exports = {t.id: export_job(config.out, models[t.id], splits, t.point.format, t.point.quantize,
                                    f"export {t.point.name}" + (f" for {t.target}" if registered(t.target) else ""),
                                    t.target, foreign) for t in live}

        # Each target's anchor (its first unpruned INT8 trial, else its first trial) is exported first; every
        # bench of the target then times the anchor in the same rounds as its own artifact, on the same node,
        # so the front compares latencies relative to it rather than figures taken at different times.
        anchors = {target: _anchor_trial([t for t in live if t.target == target]) for target in config.targets
                   if not registered(target)}
        anchors = {target: trial for target, trial in anchors.items() if trial is not None}

        def then_bench(trial: Trial) -> StageJob:
            anchor = anchors.get(trial.target)
            anchor_export = exports[anchor.id] if anchor is not None and anchor.status != "failed" else None
            return bench_job(config.out, models[trial.id], exports[trial.id], splits, trial.target, config.runs,
                             f"bench {trial.id}", placement.bench_cpus[trial.target], config.threads, anchor_export)

        runner.run({t.id: exports[t.id] for t in anchors.values()}, then={"bench": then_bench})
        anchor_ids = {t.id for t in anchors.values()}
        runner.run({t.id: exports[t.id] for t in live if t.id not in anchor_ids}, then={"bench": then_bench})

    if config.model is not None:  # search --model: the given model, export and bench only
        from . import given

        return given.run(config, trials, export_and_bench)
    live = [t for t in trials if t.status == "pending"]
    # Rung 1: one fine-tune per backbone x strategy x input size.
    finetunes = {t.id: finetune_job(config.out, splits, split_key, finetune_options(config, t.point),
                                    f"finetune {t.point.branch}", gpus) for t in live}
    runner.run({t.id: finetunes[t.id] for t in live})
    live = _rung(config, runner, live, "finetune", lambda t: t.point.branch)

    # Rung 2: one pruned model per branch x sparsity (sparsity 0: the fine-tuned model itself).
    models: dict[str, Path] = {}
    prunes = {}
    for t in live:
        model = Path(t.stages["finetune"]["directory"])
        if t.point.sparsity > 0:
            prune_options = dict(method=config.prune_method, sparsity=t.point.sparsity,
                                 epochs=config.epochs if config.prune_epochs is None else config.prune_epochs)
            # Only options set are keyed, so the stages of searches without them are reused as they are.
            prune_options.update({k: v for k, v in (("lr", config.prune_lr), ("importance", config.prune_importance),
                                                    ("recovery_loss", config.prune_loss),
                                                    ("patience", config.prune_patience)) if v is not None})
            if config.prune_method == "structured":  # the rounding of kept channels changes the model
                prune_options["channel_multiple"] = CHANNEL_MULTIPLE
            prunes[t.id] = prune_job(config.out, model, prune_options,
                                     f"prune {t.point.branch} to {t.point.sparsity:g}", gpus)
        models[t.id] = model
    runner.run(prunes)
    for t in live:
        if t.status == "pending" and t.id in prunes:
            models[t.id] = Path(t.stages["prune"]["directory"])
        elif t.status == "pending":
            t.stages["prune"] = {**t.stages["finetune"], "skipped": "sparsity 0: the fine-tuned model"}
    live = _rung(config, runner, [t for t in live if t.status == "pending"], "prune",
                 lambda t: f"{t.point.branch}/sp{t.point.sparsity:g}")

    export_and_bench(live, models)


def _anchor_trial(trials: list[Trial]) -> Trial | None:
    """A target's fixed yardstick: the first unpruned INT8 trial of the first backbone, else the first trial."""
    return next((t for t in trials if t.point.sparsity == 0 and t.point.quantize == "int8"),
                trials[0] if trials else None)


def finetune_options(config: SearchConfig, point: Point) -> dict[str, Any]:
    """The finetune options `edgetl run` keys its stage on. A point from the input-size axis keys its size
    only when it is not the backbone's own, so it shares the fine-tune of a search that names no size."""
    size = point.finetune_size() if point.input_size else config.input_size
    return dict(backbone=point.backbone, weights=config.weights, strategy=point.strategy, epochs=config.epochs,
                batch_size=config.batch_size, lr=config.lr, input_size=size, seed=config.seed)


def _rung(config: SearchConfig, runner: "_Runner", live: list[Trial], kind: str,
          branch: Callable[[Trial], str]) -> list[Trial]:
    """Stop the branches successive halving drops at this rung; the survivors go on."""
    live = [t for t in live if t.status == "pending"]
    candidates = {}
    for t in live:
        stage = t.stages[kind]
        candidates.setdefault(branch(t), {"id": branch(t), "val_accuracy": stage.get("val_accuracy"),
                                          "params": stage.get("params"), "rung": kind})
    stopped = halving(list(candidates.values()), config.eta)
    for t in live:
        if branch(t) in stopped:
            runner.finish(t, "pruned", stopped[branch(t)])
    return [t for t in live if t.status == "pending"]


class _Runner:
    """Sends stage jobs to Ray (one task per distinct stage), waits, records outcomes on the trials."""

    def __init__(self, config: SearchConfig, trials: list[Trial]):
        self.config = config
        self.trials = trials
        self.built = 0  # stages built by a worker in this run
        self.reused_dirs: set[Path] = set()  # finished stages of earlier runs this run read back
        self.progress = Progress(trials, enabled=config.verbose)

    def run(self, jobs: dict[str, StageJob], then: dict[str, Callable[[Trial], StageJob]] | None = None) -> None:
        """Run ``{trial id: job}``; ``then`` maps a follow-up kind to the job each trial needs next."""
        import ray

        by_id = {t.id: t for t in self.trials}
        waiting: dict[Path, list[Trial]] = {}
        pending: dict[Any, StageJob] = {}  # Ray object ref -> job
        started: dict[Path, float] = {}

        def submit(trial: Trial, job: StageJob) -> None:
            if trial.status != "pending":
                return
            if job.directory in waiting:
                waiting[job.directory].append(trial)
                return
            waiting[job.directory] = [trial]
            if job.finished():  # from an earlier run: no task, no worker
                self.reused_dirs.add(job.directory)
                complete(job, {"reused": True})
                return
            options = dict(num_cpus=job.num_cpus, num_gpus=job.num_gpus, resources=job.resources, max_retries=0,
                           retry_exceptions=False, name=job.label)
            ref = _remote().options(**options).remote(job.kind, job.key, str(job.directory), job.spec)
            pending[ref] = job
            started[job.directory] = time.monotonic()
            self.progress.running(job.label, waiting[job.directory])

        def complete(job: StageJob, outcome: dict[str, Any]) -> None:
            self.progress.stopped(job.label)
            error = outcome.get("error")
            info = None
            if error is None:
                try:
                    info = {**describe(job), "reused": outcome.get("reused", False)}
                except (OSError, ValueError, KeyError, StopIteration) as exc:
                    error = f"{job.kind}: its output cannot be read ({type(exc).__name__}: {exc})"
            for trial in waiting.pop(job.directory):
                if error:
                    self.finish(trial, "failed", error)
                    continue
                trial.stages[job.kind] = info
                follow = (then or {}).get(_next(job.kind))
                if follow is not None and trial.status == "pending":
                    try:
                        submit(trial, follow(trial))
                    except (OSError, ValueError, KeyError) as exc:
                        self.finish(trial, "failed", f"{_next(job.kind)}: {type(exc).__name__}: {exc}")
                elif _next(job.kind) is None:
                    self.finish(trial, "done")

        for trial_id, job in jobs.items():
            submit(by_id[trial_id], job)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            self.progress.refresh()
            for ref in ready:
                job = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                    self.built += not outcome.get("reused")
                    if outcome.get("reused"):
                        self.reused_dirs.add(job.directory)
                except Exception as exc:  # noqa: BLE001 - any task failure becomes the trials' reason
                    outcome = {"error": f"{job.kind}: {failure_reason(exc)}"}
                complete(job, outcome)
        self.progress.refresh()

    def finish(self, trial: Trial, status: str, reason: str | None = None) -> None:
        trial.status, trial.reason = status, reason
        self.progress.finished(trial)


def _next(kind: str) -> str | None:
    order = ("finetune", "prune", "export", "bench")
    return order[order.index(kind) + 1] if kind != "bench" else None


def failure_reason(exc: BaseException) -> str:
    """One line for a failed Ray task: the stage's own error, or what happened to its worker."""
    import ray.exceptions as rex

    cause = getattr(exc, "cause", None) if isinstance(exc, rex.RayTaskError) else None
    if isinstance(exc, rex.OutOfMemoryError):
        text = "out of memory (Ray's memory monitor killed the worker)"
    elif isinstance(exc, (rex.WorkerCrashedError, rex.NodeDiedError, rex.LocalRayletDiedError)):
        text = f"its worker died ({type(exc).__name__})"
    elif cause is not None:
        text = f"{type(cause).__name__}: {cause}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:400]


_REMOTE = None


def _remote():
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(run_stage)
    return _REMOTE


@dataclass
class Placement:
    gpus: float  # what a fine-tune or prune asks for: 1 when the cluster has GPUs
    # What a bench asks for besides target:<name>: every CPU of the smallest node offering the target,
    # so no other stage shares the node while it is timed.
    bench_cpus: dict[str, float]


@contextlib.contextmanager
def ray_session(config: SearchConfig) -> Iterator[Placement]:
    """Ray for the search: joined at ``--address``, already initialised by the caller, or started
    in-process on this machine's cores (quiet, no dashboard); yields where stages go."""
    with contextlib.ExitStack() as stack:
        # Ray reads RAY_AUTH_MODE once, when it is imported: the token mode is set before that.
        token = stack.enter_context(use_token()) if config.address else None
        try:
            import ray
        except ImportError:
            raise UsageError("edgetl search runs on Ray: pip install 'edgetl[search]'") from None
        owned = not ray.is_initialized()
        if owned:
            _init(ray, config, token)
        yield from _placement(ray, config, owned)


def _init(ray, config: SearchConfig, token: str | None) -> None:
    common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                  runtime_env={"env_vars": WORKER_ENV})
    sigterm = signal.getsignal(signal.SIGTERM)  # ray.init replaces it with a silent sys.exit
    if config.address:
        host, needs_token = probe_gcs(config.address)  # nothing there, or not a Ray head: one line in seconds
        if needs_token:
            check_token(config.address, token)
        # Ray rewrites 127.0.0.1 to the network address; other loopback addresses stay as given.
        local_ip = {"_node_ip_address": host} if host.startswith("127.") and host != "127.0.0.1" else {}
        try:
            ray.init(address=config.address, **local_ip, **common)
        except Exception as exc:  # ConnectionError, RuntimeError, ray.exceptions.AuthenticationError, ...
            raise join_failure(config.address, exc, token) from None
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=config.cores(), object_store_memory=OBJECT_STORE_BYTES,
                 resources={target_resource(t): 1 for t in config.targets}, **common)
    if threading.current_thread() is threading.main_thread() and sigterm is not None:
        signal.signal(signal.SIGTERM, sigterm)  # edgetl's: exit 143 with its one line, clean-up first


def _placement(ray, config: SearchConfig, owned: bool) -> Iterator[Placement]:
    try:
        resources = ray.cluster_resources()
        missing = [t for t in config.targets if resources.get(target_resource(t), 0) <= 0]
        if missing:
            raise UsageError(f"no node of the Ray cluster offers target {missing[0]!r}; start one with "
                             f"ray start --address ... --resources '{{\"{target_resource(missing[0])}\": 1}}'")
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        bench_cpus = {}
        for t in config.targets:
            cpus = [n.get("CPU", 0) for n in nodes if n.get(target_resource(t)) and n.get("CPU", 0) >= 1]
            if not cpus:
                raise UsageError(f"no node offering target {t!r} has a CPU to run its benches")
            bench_cpus[t] = min(cpus)
        yield Placement(1 if resources.get("GPU", 0) >= 1 else 0, bench_cpus)
    finally:
        if owned:
            ray.shutdown()
