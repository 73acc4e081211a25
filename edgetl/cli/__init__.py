"""The `edgetl` command line (``app.py``: the typer commands; ``runner.py``: ``main``/``entry``;
``signals.py``: SIGTERM; ``frameworks.py``: quiet TensorFlow start-up)."""

from .app import app
from .frameworks import _load_tensorflow, _quiet_frameworks
from .runner import entry, main

__all__ = ["app", "entry", "main", "_load_tensorflow", "_quiet_frameworks"]
