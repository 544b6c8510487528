"""Live search progress in the terminal: trials done / running / failed / pruned / infeasible and Pareto size."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .storage import counts_toward_budget, front_trials, trial_category


class SearchProgress:
    """Counts are read back from the study (the one truth) at every event, so a resumed run starts right."""

    def __init__(self, study: optuna.Study, target_trials: int, console: Console | None = None):
        self.study, self.target = study, target_trials
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]trials"), BarColumn(bar_width=20), MofNCompleteColumn(), TextColumn("{task.description}"),
            TimeElapsedColumn(), console=self.console, transient=False,
        )
        self.task = None
        self.last_line = ""

    @staticmethod
    def make_console(quiet: bool = False) -> Console:
        return Console(stderr=True, quiet=quiet)

    def __enter__(self):
        self.progress.start()
        self.task = self.progress.add_task("", total=self.target)
        self.refresh()
        return self

    def __exit__(self, *exc):
        self.refresh()
        self.progress.stop()

    def counts(self) -> dict[str, int]:
        trials = self.study.get_trials(deepcopy=False)
        count = {s: 0 for s in ("done", "running", "failed", "pruned", "infeasible", "repeat")}
        for t in trials:
            category = trial_category(t)
            if category == "interrupted" or (category == "running" and t.state != TrialState.RUNNING):
                continue  # interrupted ones run again; queued ones have not started
            count["done" if category == "complete" else category] += 1
        count["counted"] = sum(counts_toward_budget(t) for t in trials)
        count["pareto"] = len(front_trials(self.study))
        return count

    def refresh(self, kind: str | None = None, trial=None) -> None:
        c = self.counts()
        line = (
            f"{c['done']} done, {c['running']} running, {c['failed']} failed, {c['pruned']} stopped, "
            f"{c['infeasible']} over budget | Pareto {c['pareto']}"
        )
        if self.task is not None:
            self.progress.update(self.task, completed=min(c["counted"], self.target), description=line)
        if trial is not None and kind in ("fail",):
            self.console.print(f"trial {trial.number} failed: {trial.user_attrs.get('fail_reason')}")
        self.last_line = line

    __call__ = refresh
