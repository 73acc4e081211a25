"""Which devices serve a target, and where the runtime placed an artifact's nodes (CPU fallback on
gpu/npu is never silent)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..errors import CheckFailed, DeviceUnavailable
from ..runtime import backends

if TYPE_CHECKING:
    from .config import Artifact, BenchConfig

log = logging.getLogger("edgetl")


def describe_available(available: dict[str, list[str]]) -> str:
    parts = [f"{runtime}: {', '.join(devices) or 'none'}" for runtime, devices in available.items()]
    return "; ".join(parts) or "no runtime installed"


def check_target(target: str, formats: set[str]) -> dict[str, list[str]]:
    available = backends.available_devices()
    devices = backends.target_devices(target, available)
    missing = sorted(f for f in formats if not devices.get(f))
    if missing:
        names = ", ".join(backends.RUNTIME_BY_FORMAT[f] for f in missing)
        raise DeviceUnavailable(f"no {target} device for {names} on this machine "
                                f"(available: {describe_available(available)})")
    return devices


class StrictPlacementError(CheckFailed):
    """--strict and a CPU fallback: stops the whole bench (unlike one unusable artifact)."""


def check_placement(artifact: Artifact, placement: dict[str, Any], config: BenchConfig) -> None:
    """CPU fallback on gpu/npu is never silent: a warning (and a report column), an error with --strict."""
    problem = None
    if placement["cpu_fallback_nodes"]:
        total = sum(placement["nodes"].values())
        problem = f"{placement['cpu_fallback_nodes']} of {total} nodes run on the CPU"
    elif not placement["verified"]:
        problem = f"placement cannot be verified ({placement['method']})"
    if problem and config.strict:
        raise StrictPlacementError(f"--strict: {artifact.name} on --target {config.target}: {problem}")
    if problem:
        log.warning("%s on --target %s: %s", artifact.name, config.target, problem)

