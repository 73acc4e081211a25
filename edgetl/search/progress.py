"""Progress of a search on stderr: one live line per running stage (with the trials waiting on it)
and a summary of done / failed / pruned. On a terminal it is a rich Live display; otherwise (logs,
CI) one plain line per event."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    def __init__(self, trials: list[Any], enabled: bool = True):
        self.trials = trials
        self.enabled = enabled
        self.running_since: dict[str, tuple[float, int]] = {}
        self.live = None
        self.console = None
        if enabled:
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False)
            if self.console.is_terminal:
                from rich.live import Live

                self.live = Live(self._render(), console=self.console, refresh_per_second=2, transient=True)
                self.live.start()

    def summary(self) -> str:
        counts = {s: sum(t.status == s for t in self.trials) for s in ("done", "failed", "pruned", "pending")}
        return (f"trials: {counts['done']} done, {counts['failed']} failed, {counts['pruned']} pruned, "
                f"{counts['pending']} to go ({len(self.trials)} in all)")

    def _render(self):
        from rich.text import Text

        now = time.monotonic()
        lines = [f"  {label}  [{n} trial(s)]  {now - since:5.0f} s"
                 for label, (since, n) in self.running_since.items()]
        return Text("\n".join([*lines, self.summary()]))

    def _say(self, message: str) -> None:
        if not self.enabled:
            return
        if self.live is not None:
            self.live.console.print(message)
            self.live.update(self._render())
        else:
            print(message, file=sys.stderr, flush=True)

    def running(self, label: str, trials: list[Any]) -> None:
        self.running_since[label] = (time.monotonic(), len(trials))
        if self.live is None:
            self._say(f"started  {label}")
        else:
            self.live.update(self._render())

    def stopped(self, label: str) -> None:
        self.running_since.pop(label, None)

    def finished(self, trial: Any) -> None:
        reason = f": {trial.reason}" if trial.reason else ""
        self._say(f"{trial.status:7s}  {trial.id}{reason}   ({self.summary()})")

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render())

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        if self.enabled:
            print(f"search: {self.summary()}", file=sys.stderr, flush=True)
