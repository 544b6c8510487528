"""Search progress: trials done / running / failed / pruned / infeasible and Pareto size.

In a terminal, a live bar. Written to a file or a pipe (a batch job's log), a live bar would leave only its
last frame, so there plain lines are printed instead, on trial events and at most every `min_interval` seconds.
"""

from __future__ import annotations

import threading
import time

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sslc.console import make_console
from sslc.runs.trials import Outcome, TrialRecord, front_trials, outcome_of

# Plain progress lines in a log: at most one per this many seconds (the final state is always printed).
LOG_INTERVAL = 5.0


class SearchProgress:
    """Counts are read back from the study (the one truth) at every event, so a resumed run starts right."""

    def __init__(
        self, study: optuna.Study, target_trials: int, console: Console | None = None,
        min_interval: float = LOG_INTERVAL,
    ):
        self.study, self.target = study, target_trials
        self.console = console or self.make_console()
        self.live = self.console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]trials"), BarColumn(bar_width=20), MofNCompleteColumn(), TextColumn("{task.description}"),
            TimeElapsedColumn(), console=self.console, transient=False,
        )
        self.task = None
        self.last_line, self.counted = "", 0
        self.min_interval = min_interval
        self.started = self.last_printed = None
        self.printed_line = ""
        self.pending: threading.Timer | None = None  # prints a line held back by min_interval, once it passed
        self.lock = threading.Lock()

    @staticmethod
    def make_console(quiet: bool = False, file=None) -> Console:
        """stderr (or `file`); full width when it is not a terminal, so a log keeps whole tables and lines."""
        return make_console(stderr=file is None, quiet=quiet, file=file)

    def __enter__(self):
        self.started = time.monotonic()
        if self.live:
            self.progress.start()
            self.task = self.progress.add_task("", total=self.target)
        self.refresh()
        return self

    def __exit__(self, *exc):
        self.refresh()
        if self.live:
            self.progress.stop()
        else:
            if self.pending is not None:
                self.pending.cancel()
            self._print_plain(force=True)

    def counts(self) -> dict[str, int]:
        trials = self.study.get_trials(deepcopy=False)
        count = {s: 0 for s in ("done", "running", "failed", "pruned", "infeasible", "repeat")}
        outcomes = [outcome_of(t) for t in trials]
        for t, outcome in zip(trials, outcomes):
            if outcome == Outcome.INTERRUPTED or (outcome == Outcome.RUNNING and t.state != TrialState.RUNNING):
                continue  # interrupted ones run again; queued ones have not started
            count["done" if outcome == Outcome.COMPLETE else outcome.value] += 1
        count["counted"] = sum(outcome.trained for outcome in outcomes)
        count["pareto"] = len(front_trials(self.study))
        return count

    def refresh(self, kind: str | None = None, trial=None) -> None:
        c = self.counts()
        line = (
            f"{c['done']} done, {c['running']} running, {c['failed']} failed, {c['pruned']} stopped, "
            f"{c['infeasible']} over budget | Pareto {c['pareto']}"
        )
        self.counted = min(c["counted"], self.target)
        if self.task is not None:
            self.progress.update(self.task, completed=self.counted, description=line)
        if trial is not None and kind in ("fail",):
            self.console.print(f"trial {trial.number} failed: {TrialRecord.read(trial).fail_reason}")
        self.last_line = line
        if not self.live and self.started is not None:
            self._print_plain()

    def _print_plain(self, force: bool = False) -> None:
        """One progress line for a log, when something changed and `min_interval` has passed (or `force`); a
        change held back is printed by a timer once the interval is over, so a log never lags behind for long."""
        with self.lock:
            now = time.monotonic()
            text = f"trials {self.counted}/{self.target}: {self.last_line}"
            if text == self.printed_line:
                return
            wait = 0.0 if force or self.last_printed is None else self.last_printed + self.min_interval - now
            if wait > 0:
                if self.pending is None:
                    self.pending = threading.Timer(wait, self._flush)
                    self.pending.daemon = True
                    self.pending.start()
                return
            elapsed = int(now - self.started)
            self.console.print(f"[{elapsed // 60}:{elapsed % 60:02d}] {text}", markup=False, highlight=False)
            self.printed_line, self.last_printed = text, now

    def _flush(self) -> None:
        self.pending = None
        self._print_plain()

    __call__ = refresh
