"""Content-addressed stages, shared by `edgetl run` (``pipeline``) and `edgetl search` (``search.stages``).

A stage is a folder a step writes atomically (a split, a fine-tuned model, artifacts, a bench report)
plus ``stage.json``: the key of its inputs (``content_key`` of their fingerprints, the upstream model's
hash and the options) and the sha256 of every file it wrote. ``reuse_or_build`` reuses a finished stage
whose key matches only while those files are all still there and intact, and otherwise says why and
builds it again; the record is written last, so a stage interrupted midway has none and is redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from .console import say
from .metadata import OUTPUT_MARKER, read_json, sha256_file, write_json

STAGE_FILE = "stage.json"


def content_key(payload: dict[str, Any]) -> str:
    """The sha256 of ``payload`` as canonical JSON: a stage's key."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def reuse_or_build(name: str, directory: Path, key: str, build: Callable[[Path], None], *, force: bool = False,
                   verbose: bool = True) -> bool:
    """Run ``build(directory)`` unless it already holds a finished stage with this key (then True: reused).

    ``build`` writes ``directory`` atomically (every library stage does); the record is written last,
    so a stage interrupted midway has none and is redone. ``force`` rebuilds whatever is there.
    """
    record = read_stage_record(directory)
    problem = None if force or record.get("key") != key else stage_damage(directory, record)
    if not force and record.get("key") == key and problem is None:
        say(f"== {name}: inputs unchanged, reusing {directory}", verbose)
        return True
    why = (f": inputs unchanged but {problem}; redoing it" if problem
           else ": inputs changed" if record.get("key") and not force else "")
    say(f"== {name}{why}", verbose)
    started = time.perf_counter()
    build(directory)
    write_json(directory / STAGE_FILE, {"stage": name, "key": key, "seconds": round(time.perf_counter() - started, 2),
                                        "outputs": stage_outputs(directory)})
    return False


def read_stage_record(directory: Path) -> dict[str, Any]:
    """``directory/stage.json`` as a dict; empty when absent or unreadable."""
    try:
        record = read_json(Path(directory) / STAGE_FILE)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def stage_outputs(directory: Path) -> dict[str, str]:
    """sha256 of every file a stage wrote, by path relative to its directory."""
    return {str(p.relative_to(directory)): sha256_file(p) for p in sorted(directory.rglob("*"))
            if p.is_file() and p.relative_to(directory).as_posix() not in (STAGE_FILE, OUTPUT_MARKER)}


def stage_damage(directory: Path, record: dict[str, Any]) -> str | None:
    """Why a finished stage cannot be reused (a recorded output missing or changed), or None."""
    outputs = record.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        return "its stage.json records no outputs (written by an older edgetl)"
    for name, digest in outputs.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != digest:
            return f"{name} changed since it was written"
    return None


def stage_finished(directory: Path, key: str) -> bool:
    """Whether ``directory`` holds a finished stage with this key whose outputs are intact: what
    ``reuse_or_build`` would reuse (`edgetl search` asks before it sends a stage to a Ray worker)."""
    record = read_stage_record(Path(directory))
    return record.get("key") == key and stage_damage(Path(directory), record) is None


def outputs_key(directory: Path) -> str:
    """The key of what a finished stage wrote (a downstream stage's input)."""
    return content_key(read_stage_record(directory).get("outputs") or {})


def materialise_split(images, dst: Path) -> None:
    """Copy (hard-link where possible) a split (``data.ImageSet``) into ``dst/<class>/`` so later stages
    take a folder."""
    for path, label in zip(images.paths, images.labels):
        target = dst / images.classes[label] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
