"""The `edgetl` command line (``app.py``: the typer commands; ``runner.py``: ``main``/``entry``;
``signals.py``: SIGTERM; ``frameworks.py``: quiet TensorFlow start-up)."""

from .app import app
from .frameworks import load_tensorflow, quiet_frameworks
from .runner import entry, main

__all__ = ["app", "entry", "main", "load_tensorflow", "quiet_frameworks"]
