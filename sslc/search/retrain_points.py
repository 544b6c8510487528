"""Several chosen points retrained at once (`sslc-retrain RUN --pareto`, or several `--trial`): Ray schedules them.

Each point is one Ray task on the driver's machine (its files go to `<run_dir>/retrain/<trial>/`) holding the
point's resources: `cpus` and `gpus` per point (default: one GPU each where the machine has GPUs, else the
machine's CPUs shared among the points, at least one each: on 2 cores, two points train at once on one thread each,
measured 1.33x the throughput of one after another on two threads, with the same held-out losses).
Ray starts a point when its resources are free, so points run concurrently when they fit and one after another
when only one does. With `--workers N` a point's task only coordinates (no resources of its own): its Ray Train
workers claim theirs (`retrain_parallel`), so two points train together when the cluster holds both groups.

The driver draws one progress view (rich) for all points from what the tasks report to a small actor (`Board`),
records each point on the study as soon as it finishes (a point that fails is one line and does not touch the
others' finished work), and asks the tasks to stop (a checkpoint each) on the first Ctrl-C. Tasks never wait on
Ray while they train: a task blocked in `ray.get` lends its CPUs to the next task, which would then train beside
it on CPUs it does not hold. So reports go to the board without waiting, and the stop request is a file (the
tasks run on the driver's machine).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import replace

from sslc.console import make_console
from sslc.errors import first_line

POLL_SECONDS = 0.5  # how often the driver refreshes the progress view and looks for finished points


class Board:
    """A Ray actor: the latest (step, loss) each point reported."""

    def __init__(self):
        self.points: dict[int, tuple[int, float]] = {}

    def report(self, trial: int, step: int, loss: float) -> None:
        self.points[trial] = (step, loss)

    def snapshot(self) -> dict[int, tuple[int, float]]:
        return dict(self.points)


def point_resources(plan, cpus: float | None, gpus: float | None, points: int = 1) -> tuple[float, float]:
    """(CPUs, GPUs) one of `points` points' task holds on the driver's machine; None: the default described
    above."""
    import ray

    if plan.workers:
        return 0.0, 0.0  # its Ray Train workers hold the resources
    here = ray.get_runtime_context().get_node_id()
    node = next(n["Resources"] for n in ray.nodes() if n["NodeID"] == here)
    if gpus is None:
        gpus = 1.0 if node.get("GPU", 0) >= 1 and plan.trainer.device != "cpu" else 0.0
    if cpus is None:
        # Small models use a second intra-op thread poorly: two 300-step mini-HuBERT retrains took 116 s side by
        # side on one thread each, 154 s one after another on two (2 cores). Many points on a big CPU machine
        # each hold a student and its optimizer in memory at once; --cpus-per-point bounds how many.
        share = node.get("GPU", 1) if gpus else points
        cpus = max(1.0, node.get("CPU", 1) // max(share, 1))
    return float(cpus), float(gpus)


def _retrain_point(run_dir: str, trial, plan, inputs, board, stop_file: str) -> dict:
    """One point, in its Ray task: retrain it into the run's retrain directory (the driver records it)."""
    from sslc.runs.record import open_run

    from .retrain import RetrainStopped, retrain_trial

    run = open_run(run_dir)
    context, train_data = inputs
    try:
        return retrain_trial(run, trial, plan, context, run.retrain_dir(trial.number), progress=False,
                             train_data=train_data,
                             on_report=lambda step, loss: _report(board, trial.number, step, loss, stop_file))
    except RetrainStopped as stopped:
        return {"trial": trial.number, "status": "stopped", "reason": str(stopped)}


def _report(board, trial: int, step: int, loss: float, stop_file: str) -> bool:
    board.report.remote(trial, step, loss)  # not waited for (see the module's docstring)
    return os.path.exists(stop_file)


class PointsProgress:
    """One rich progress view: a row per point (steps done of its total, its last loss, its state)."""

    def __init__(self, totals: dict[int, int], label: str, enabled: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("trial {task.fields[trial]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[state]}"), TimeElapsedColumn(),
            console=make_console(stderr=True), disable=not enabled,
        )
        self.rows = {n: self.progress.add_task(label, total=total, trial=n, loss="-", state="waiting")
                     for n, total in totals.items()}

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def update(self, reported: dict[int, tuple[int, float]]) -> None:
        for number, (step, loss) in reported.items():
            self.progress.update(self.rows[number], completed=step, loss=f"{loss:.4f}", state="training")

    def finished(self, number: int, state: str) -> None:
        self.progress.update(self.rows[number], state=state)


def retrain_points(run, chosen: list, plan, context, train_data, cpus: float | None = None,
                   gpus: float | None = None, progress: bool = True, should_stop: Callable[[], bool] | None = None,
                   say: Callable[[str], None] = print, record: Callable[[dict], None] | None = None) -> list[dict]:
    """Retrain `chosen` (TrialRecords of `run`) by `plan`, each a Ray task (Ray must be initialised); `record(result)`
    runs in the driver as each point finishes. Returns the results in `chosen`'s order; a point that failed is
    {"trial", "status": "failed", "reason"}, one that was stopped {"trial", "status": "stopped", "reason"}."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from sslc.trainers.distill import full_run_steps

    cpus, gpus = point_resources(plan, cpus, gpus, len(chosen))
    if not plan.workers:  # the task's own threads and device are what it holds
        device = "cuda" if gpus else ("cpu" if plan.trainer.device in (None, "auto") else plan.trainer.device)
        plan = replace(plan, trainer=replace(plan.trainer, num_threads=max(1, int(cpus)), device=device))
    say(f"{len(chosen)} points, each a Ray task with {cpus:g} CPUs and {gpus:g} GPUs"
        + (f" (its {plan.workers} Ray Train workers hold the resources)" if plan.workers else "")
        + ": as many train at once as the machine holds")
    board = ray.remote(num_cpus=0)(Board).remote()
    inputs = ray.put((context, train_data))
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    task = ray.remote(_retrain_point).options(num_cpus=cpus, num_gpus=gpus, scheduling_strategy=here,
                                             max_retries=0)
    stop_file = run.run_dir / "retrain" / f".stop-{uuid.uuid4().hex}"
    stop_file.parent.mkdir(parents=True, exist_ok=True)
    pending = {task.remote(str(run.run_dir), trial, plan, inputs, board, str(stop_file)): trial for trial in chosen}
    results: dict[int, dict] = {}
    totals = {t.number: full_run_steps(train_data, plan.trainer) for t in chosen}
    try:
        with PointsProgress(totals, plan.label, progress) as view:
            _wait_for(pending, results, view, board, stop_file, should_stop, say, record)
    finally:
        stop_file.unlink(missing_ok=True)
    return [results[t.number] for t in chosen]


def _wait_for(pending: dict, results: dict, view: PointsProgress, board, stop_file, should_stop, say, record) -> None:
    """Until every point's task is done: refresh the view, pass a stop request on, collect and record results."""
    import ray

    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
        view.update(ray.get(board.snapshot.remote()))
        if should_stop is not None and not stop_file.exists() and should_stop():
            stop_file.touch()
        for ref in done:
            trial = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as error:  # this point only: the others go on
                cause = getattr(error, "cause", None) or error
                result = {"trial": trial.number, "status": "failed", "reason": first_line(cause)}
                say(f"trial {trial.number} failed: {result['reason']}")
            if result["status"] not in ("failed", "stopped") and record is not None:
                record(result)
            results[trial.number] = result
            view.finished(trial.number, result["status"] + (" earlier" if result.get("skipped") else ""))
