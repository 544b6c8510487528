"""The training progress bar: steps, loss and throughput in seconds of audio per second (rich)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainingProgress:
    """A context manager; `update` after each step. Disabled, it draws nothing and starts no refresh thread."""

    def __init__(self, total: int, completed: int = 0, enabled: bool = True, description: str = "distilling"):
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} audio s/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),  # stdout stays free for results
            disable=not enabled,
        )
        self._task = self._progress.add_task(
            description, total=total, completed=completed, loss="-", speed="-"
        )
        self._enabled = enabled
        self._audio_seconds = 0.0
        self._started = time.perf_counter()

    def __enter__(self) -> TrainingProgress:
        self._progress.start()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def update(self, loss: float, audio_seconds: float) -> None:
        """One more step done, on `audio_seconds` of audio, with training loss `loss`."""
        if not self._enabled:
            return
        self._audio_seconds += audio_seconds
        speed = self._audio_seconds / max(time.perf_counter() - self._started, 1e-9)
        self._progress.update(self._task, advance=1, loss=f"{loss:.4f}", speed=f"{speed:.1f}")
