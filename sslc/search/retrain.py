"""Retrain chosen points of a search to completion by a named recipe, validated as they train, resumable.

The driver of `sslc-retrain`. It lives with the search driver, not in the run record (`sslc/runs/`), because it
runs training: it reads the run (`sslc.runs.record`), rebuilds its inputs, trains (`sslc.trainers.train_full`)
and writes what it measured back through `sslc.runs` (the study's "retrain:<trial>" attr, the Pareto files).

Each student is rebuilt exactly as its trial built it (`prepare_inputs(...).build_student`, same teacher, data,
importance scores; in an anytime run, extracted from the shared weights it was scored on), then trained by the
recipe (`sslc.trainers.recipes`: `quick` is 10x the trial's steps with its settings) under
`<run_dir>/retrain/<trial>/checkpoint/`, so an interrupted retrain continues where it stopped when run again.
Every `eval_every` steps it is scored by the study's own protocol (same targets, same held-out segments as its
trial); the best validated weights are kept beside the last. At the end `student.pt` holds the best weights (what
`sslc-export` takes), `student-last.pt` the last; the resumable checkpoint (optimizer state: ~3x the student) is
deleted, and the result (recipe, validation curve, costs measured again) goes to `result.json`, the study and the
Pareto files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from optuna.trial import TrialState

from sslc.compress import CompressionConfig
from sslc.data import LengthBucketBatchSampler, SegmentDataset
from sslc.errors import UserError
from sslc.files import write_json_atomically
from sslc.protocol import EvaluationProtocol
from sslc.runs.export import LAST_WEIGHTS_FILE, RESULT_FILE
from sslc.runs.record import RunRecord, open_run
from sslc.runs.student_file import WEIGHTS_FILE, save_student
from sslc.runs.study import record_retrain
from sslc.runs.trials import Outcome, TrialRecord
from sslc.search.inputs import RunInputs, load_audio_split, prepare_inputs, train_crops
from sslc.trainers import TrainerConfig, load_checkpoint, train_full
from sslc.trainers.recipes import apply_recipe

log = logging.getLogger("sslc.retrain")

CHECKPOINTS_PER_RUN = 10
# The heads' least-squares start, fitted on 8x as many frames as student channels. On the demo's first point it
# lowered the held-out loss after 3 steps from 45.0 to 34.7, but the jump after the first step stays (0.27 -> 50.7):
# see the README.
HEAD_FIT_FRAMES_PER_DIM = 8
CHECKPOINT_SECONDS = 60.0  # and at most one periodic checkpoint a minute (each is ~3x the student, fsynced)
REPORTS_PER_RUN = 50
VALIDATIONS_PER_RUN = 10  # default --eval-every: this many held-out scorings over a run
# Trainer settings that say where a run trained, not what: a point's Ray task pins its threads to its CPUs and
# resolves device "auto" to the one it holds.
PLACEMENT_SETTINGS = ("num_threads", "device")
LATENCY_REPEATS = 5


def trained_alike(used: dict, trainer: TrainerConfig) -> bool:
    """Whether a run recorded with trainer settings `used` trained what `trainer` would (placement aside)."""
    placement = dict.fromkeys(PLACEMENT_SETTINGS)
    return {**used, **placement} == {**trainer.to_dict(), **placement}


class RetrainStopped(KeyboardInterrupt):
    """Retraining was asked to stop; the checkpoint written at the stop resumes it."""


@dataclass
class RetrainPlan:
    """How the chosen points are retrained: the trainer settings and the recipe they came from (recorded)."""

    trainer: TrainerConfig
    recipe: dict
    workers: int = 0  # Ray Train workers (0: train in this process)
    gpus_per_worker: float = 0.0
    storage_path: str | None = None  # Ray Train's storage (default <run_dir>/retrain/<trial>/ray)

    @property
    def label(self) -> str:
        """e.g. "quick, 40 steps" (what the report's legend and the progress lines say)."""
        length = f"{self.trainer.epochs} epochs" if self.trainer.epochs else f"{self.trainer.steps} steps"
        return f"{self.recipe['name']}, {length}"


def select_trials(
    run: RunRecord, numbers: list[int] | None = None, pareto: bool = False, under_budget: bool = False
) -> list[TrialRecord]:
    """The trials to retrain: the given numbers (each must be COMPLETE) or the Pareto front."""
    if bool(numbers) == bool(pareto):
        raise UserError("choose the trials to retrain: --trial N (repeatable) or --pareto")
    if under_budget and not pareto:
        raise UserError("--under-budget goes with --pareto")
    if numbers:
        return [run.complete_trial(n) for n in dict.fromkeys(numbers)]  # order kept, duplicates dropped
    if not any(t.outcome == Outcome.COMPLETE for t in run.trials(states=(TrialState.COMPLETE,))):
        raise UserError(f"run '{run.name}' has no complete trial yet: nothing to retrain")
    chosen = run.front()
    budget = run.record.budget
    if under_budget and budget is not None:
        chosen = [
            t for t in chosen
            if not budget.violations(t.budgeted_macs(budget.convention) or 0, t.model_params, t.latency_ms)
        ]
        if not chosen:
            raise UserError(f"no Pareto point of run '{run.name}' is within its budget")
    return chosen


def check_length(steps: int | None, epochs: int | None) -> None:
    if steps is not None and epochs is not None:
        raise UserError("give --steps or --epochs, not both")
    if (steps is not None and steps < 1) or (epochs is not None and epochs < 1):
        raise UserError("--steps and --epochs must be at least 1")


def retrain_plan(
    run: RunRecord,
    recipe: str = "quick",
    steps: int | None = None,
    epochs: int | None = None,
    device: str | None = None,
    batches_per_epoch: int | None = None,
    eval_every: int | None = None,
    **overrides,
) -> RetrainPlan:
    """The search's trainer settings under `recipe` with `overrides` (Recipe fields: batch_seconds, lr, warmup,
    ...), run in this process (torch's own thread count). `batches_per_epoch` (of the recipe's training data) sets
    the report, validation and checkpoint cadence for `epochs`."""
    check_length(steps, epochs)
    if eval_every is not None and eval_every < 1:
        raise UserError(f"--eval-every must be at least 1, got {eval_every}")
    stored = run.record.trainer
    if not stored:
        raise UserError(f"run '{run.name}' records no trainer settings: was it written by sslc-search?")
    if run.record.protocol is None:
        # Its short trials were scored by an older rule: a retrained score would not be comparable with them.
        raise UserError(f"run '{run.name}' was made by an older sslc (no evaluation protocol recorded): search again")
    trainer, resolved = apply_recipe(TrainerConfig.from_dict(stored), recipe, steps=steps, **overrides)
    total = epochs * (batches_per_epoch or 1) if epochs is not None else trainer.steps
    trainer = replace(
        trainer,
        epochs=epochs,
        num_threads=None,
        device=device or trainer.device,
        log_every=max(1, total // REPORTS_PER_RUN),
        checkpoint_every=max(1, min(trainer.checkpoint_every, total // CHECKPOINTS_PER_RUN)),
        checkpoint_seconds=CHECKPOINT_SECONDS,
        head_fit_frames_per_dim=HEAD_FIT_FRAMES_PER_DIM,
        eval_every=eval_every or max(1, total // VALIDATIONS_PER_RUN),
    ).validate()
    if epochs is not None:
        resolved = {**resolved, "steps": None, "epochs": epochs}
    return RetrainPlan(trainer, {**resolved, "eval_every": trainer.eval_every})


def prepare_context(run: RunRecord) -> RunInputs:
    """The run's teacher and data, rebuilt from its settings exactly as the search built them."""
    settings = run.record.settings
    missing = [k for k in ("teacher", "data", "crop_seconds", "seed") if k not in settings]
    if missing:
        raise UserError(f"run '{run.name}' records no {', '.join(missing)} setting: was it written by sslc-search?")
    context = prepare_inputs(settings["teacher"], settings["data"], run.run_dir, settings["crop_seconds"], settings["seed"],
                             train_crops(settings))  # the crops the trials trained on (and took importance data from)
    protocol = run.record.evaluation_protocol
    if protocol is not None:
        # The held-out audio must be the one the short trials were scored on, or the scores are not comparable.
        now = EvaluationProtocol.for_heldout(protocol.targets, context.data.heldout, protocol.crop_seconds)
        if now.heldout_fingerprint != protocol.heldout_fingerprint:
            raise UserError(
                f"the held-out audio of run '{run.name}' changed since its search ({settings['data']}): "
                "retrained scores would not be comparable with its trials"
            )
    return context


def training_data(run: RunRecord, context: RunInputs, trainer: TrainerConfig) -> SegmentDataset:
    """The run's training audio cut into the recipe's crops (the search's segments when the length is theirs).
    The held-out segments always stay the search's: they are the protocol."""
    if trainer.crop_seconds == context.crop_seconds:
        return context.data.train
    settings = run.record.settings
    # As many crops as the search's sequence (a longer retrain goes over them again).
    return load_audio_split(settings["data"], context.cache_dir, trainer.crop_seconds, context.seed,
                            train_crops(settings)).train


def retrain_trial(
    run: RunRecord,
    trial: TrialRecord,
    plan: RetrainPlan,
    context: RunInputs,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    train_data: SegmentDataset | None = None,
    before_step: Callable[[int, int], None] | None = None,
    on_report: Callable[[int, float], bool] | None = None,
) -> dict:
    """Train one trial's student to the end of `plan` (resuming from `out_dir`), keep its best validated weights
    and measure them.

    `should_stop()` is polled at every training report; when it says so, a checkpoint is written and
    `RetrainStopped` raised; so it is when `on_report(step, loss)` (called there too: a progress view's feed)
    returns True. A run whose result is already in `out_dir` for the same settings is not redone.
    `before_step`: with `plan.workers`, passed to every Ray Train worker (`train_data_parallel`; a test seam).
    """
    from sslc.compress.quantize import quantize_int8
    from sslc.metrics import count_macs, count_nonzero_params, count_params, measure_latency

    trainer = plan.trainer
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    started_at = _now()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - clock
        clock = now

    record = out_dir is None  # only the run's own retrain directory is recorded on the study
    out_dir = Path(out_dir) if out_dir is not None else run.retrain_dir(trial.number)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = out_dir / RESULT_FILE
    if previous.is_file() and (out_dir / WEIGHTS_FILE).is_file():
        done = json.loads(previous.read_text())
        if done.get("status") == "completed" and trained_alike(done.get("trainer") or {}, trainer):
            log.info("trial %d is already retrained (%s)", trial.number, previous)
            summary = {k: v for k, v in done.items() if k != "curve"}
            if record and trial.number not in run.record.retrains:  # a run stopped before recording
                _record(run, trial.number, summary)
            return {**summary, "skipped": True}

    config = CompressionConfig.from_dict(trial.config)
    # int8 cannot be trained: like the search, distil the float student and measure its int8 copy.
    if run.record.mode == "anytime":  # from the shared weights the trial was scored on
        from sslc.trainers.once_for_all import load_once_for_all

        student = load_once_for_all(run.anytime_dir).elastic.extract(config)
    else:
        student = context.build_student(config, quantize=False)
    train_data = train_data if train_data is not None else training_data(run, context, trainer)
    lap("build_student")

    def reported(step: int, loss: float) -> bool:
        fed = bool(on_report(step, loss)) if on_report is not None else False
        return (bool(should_stop()) if should_stop is not None else False) or fed

    checkpoint_dir = out_dir / "checkpoint"
    if plan.workers:
        from .retrain_parallel import train_data_parallel

        anytime = run.anytime_dir if run.record.mode == "anytime" else None
        result, last, _ = train_data_parallel(
            context, train_data, trial.config, trainer, out_dir, plan.workers, plan.gpus_per_worker,
            plan.storage_path, name=f"{run.name}-retrain-{trial.number}", anytime_dir=anytime, before_step=before_step,
            on_report=on_report,
        )
        student.load_state_dict(last["student"])
    else:
        result = train_full(
            student, context.targets(), train_data, context.data.heldout, trainer, checkpoint_dir,
            progress=progress, on_report=reported, kept_layers=config.layers,
        )
    lap("train_full")
    timings["of_which_training_steps"] = result.seconds_training - result.seconds_validating
    timings["of_which_validation"] = result.seconds_validating
    if result.status == "stopped":
        raise RetrainStopped(f"trial {trial.number} stopped at step {result.steps_done}; rerun to resume")

    student = student.cpu().eval()
    last_state = {k: v.clone() for k, v in student.state_dict().items()}
    best = load_checkpoint(result.best_checkpoint) if result.best_checkpoint else None
    if best is not None:  # the exported student is the best validated one
        student.load_state_dict(best["student"])
    seconds = run.record.budget_seconds
    search_threads = (run.record.trainer or {}).get("num_threads")
    deployed = quantize_int8(student) if config.quantize == "int8" else student
    latency = measure_latency(deployed, seconds=seconds, warmup=1, repeats=LATENCY_REPEATS, threads=search_threads)
    lap("measure")
    summary = {
        "trial": trial.number,
        "status": result.status,
        "reason": result.reason,
        "recipe": plan.recipe,
        "label": plan.label,
        "steps": result.steps_done,
        "epochs": trainer.epochs,
        "workers": plan.workers or 1,
        # The exported (best validated) weights' score; the last step's beside it.
        "heldout_loss": best["heldout_loss"] if best else result.heldout_loss,
        "heldout_loss_by_target": best["heldout_loss_by_target"] if best else result.heldout_loss_by_target,
        "best_step": best["step"] if best else result.steps_done,
        "last_heldout_loss": result.heldout_loss,
        "validation": [[s, v] for s, v, _ in result.validation],
        "short_trial_heldout_loss": trial.heldout_loss,
        "short_trial_steps": trial.steps_done,
        "params": count_params(student),
        "nonzero_params": count_nonzero_params(deployed),
        "macs": count_macs(student.config, seconds=seconds).total,
        "macs_seconds": seconds,
        "latency_ms": latency.median_ms,
        "latency_threads": latency.torch_threads,
        "loss_measured_before_int8": config.quantize == "int8",
        "seconds_training": result.seconds_training,
        "resumed_from_step": result.resumed_from_step,
        "started_at": started_at,
        "finished_at": _now(),
        "trainer": trainer.to_dict(),
    }
    if result.status == "completed":
        provenance = {"run": run.name, "trial": trial.number, "weights": "retrained", "steps": result.steps_done,
                      "recipe": plan.recipe["name"], "best_step": summary["best_step"]}
        metrics = {k: summary[k] for k in ("macs", "params", "nonzero_params", "latency_ms", "heldout_loss")}
        save_student(out_dir / WEIGHTS_FILE, student, config.to_dict(), context.teacher_spec, provenance, metrics)
        student.load_state_dict(last_state)
        last = {**provenance, "weights": "retrained-last", "best_step": None}
        save_student(out_dir / LAST_WEIGHTS_FILE, student, config.to_dict(), context.teacher_spec, last,
                     {**metrics, "heldout_loss": result.heldout_loss})
    lap("write")
    summary["seconds"] = timings
    write_json_atomically(out_dir / RESULT_FILE, {**summary, "curve": [list(p) for p in result.curve],
                                                  "validation_by_target": [list(v) for v in result.validation]})
    if result.status == "completed":
        # Both weights are in the student files now: what only resuming needed (optimizer state) goes.
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        if plan.workers and not plan.storage_path:
            from .retrain_parallel import RAY_DIR

            shutil.rmtree(out_dir / RAY_DIR, ignore_errors=True)
            (out_dir / "best.pt").unlink(missing_ok=True)
    if record:
        _record(run, trial.number, summary)
    return summary


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


def _record_once(run: RunRecord, result: dict) -> None:
    """Record a point retrained in a Ray task (`retrain_points`), unless it was recorded earlier."""
    summary = {k: v for k, v in result.items() if k != "skipped"}
    if not result.get("skipped") or result["trial"] not in run.record.retrains:
        _record(run, result["trial"], summary)


def _record(run: RunRecord, number: int, summary: dict) -> None:
    record_retrain(run.study, number, {k: v for k, v in summary.items() if k != "trainer"})
    run.reload()


def retrain(
    run_dir: str | os.PathLike,
    numbers: list[int] | None = None,
    pareto: bool = False,
    under_budget: bool = False,
    recipe: str = "quick",
    steps: int | None = None,
    epochs: int | None = None,
    device: str | None = None,
    eval_every: int | None = None,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    say: Callable[[str], None] = print,
    workers: int = 0,
    gpus_per_worker: float = 0.0,
    ray_address: str | None = None,
    storage_path: str | None = None,
    cpus_per_point: float | None = None,
    gpus_per_point: float | None = None,
    **overrides,
) -> list[dict]:
    """Retrain the chosen trials of the run in `run_dir` by `recipe` (+ `overrides`, see `retrain_plan`); several
    are Ray tasks of `cpus_per_point` / `gpus_per_point` each (`retrain_points`: at once where they fit; a point
    that fails is a result with status "failed"). Returns their results."""
    check_length(steps, epochs)
    run = open_run(run_dir)
    chosen = select_trials(run, numbers, pareto, under_budget)
    options = dict(recipe=recipe, steps=steps, epochs=epochs, device=device, eval_every=eval_every, **overrides)
    plan = retrain_plan(run, **options)  # every check before the teacher is loaded
    if workers < 0 or gpus_per_worker < 0 or (gpus_per_worker and not workers):
        raise UserError("--workers must be >= 1 and --gpus-per-worker >= 0 (with --workers)")
    if ray_address and not workers:
        raise UserError("--ray-address goes with --workers")
    for name, value in (("--cpus-per-point", cpus_per_point), ("--gpus-per-point", gpus_per_point)):
        if value is not None and (value < 0 or (name == "--cpus-per-point" and value == 0)):
            raise UserError(f"{name} must be {'> 0' if name == '--cpus-per-point' else '>= 0'}, got {value:g}")
    if workers and (cpus_per_point is not None or gpus_per_point is not None):
        raise UserError("--cpus-per-point / --gpus-per-point are for points trained in one process: with --workers "
                        "each point's Ray Train workers hold its resources (--gpus-per-worker)")
    if workers and plan.trainer.batch_size < workers:
        raise UserError(f"a global batch of {plan.trainer.batch_size} crops cannot be shared by {workers} workers: "
                        "raise --batch-seconds or lower --workers")
    context = prepare_context(run)
    train_data = training_data(run, context, plan.trainer)
    if epochs is not None:  # reports, validations and checkpoints follow the real epoch length
        sampler = LengthBucketBatchSampler(train_data.lengths, plan.trainer.batch_size, seed=plan.trainer.seed)
        plan = retrain_plan(run, batches_per_epoch=len(sampler), **options)
    plan = replace(plan, workers=workers, gpus_per_worker=gpus_per_worker, storage_path=storage_path)
    together = len(chosen) > 1  # several points: Ray schedules them (retrain_points), at once where they fit
    if workers or together:
        from sslc.search.runner import start_ray

        start_ray(ray_address)
        if workers:
            context.ship_audio()  # small corpora travel with the workers' inputs (no shared disk needed)
    if together:
        from .retrain_points import retrain_points

        say(f"retraining {len(chosen)} points ({plan.label}) in {run.run_dir / 'retrain'}/<trial>")
        results = retrain_points(run, chosen, plan, context, train_data, cpus_per_point, gpus_per_point, progress,
                                 should_stop, say, record=lambda result: _record_once(run, result))
    else:
        [trial] = chosen
        say(f"retraining trial {trial.number} ({plan.label}) in {run.retrain_dir(trial.number)}")
        results = [retrain_trial(run, trial, plan, context, progress=progress, should_stop=should_stop,
                                 train_data=train_data)]
    for result in results:
        if result.get("skipped"):
            say(f"trial {result['trial']} was already retrained with these settings (delete its result.json to redo)")
    if any(r["status"] == "completed" for r in results):
        from sslc.search.pareto import write_pareto  # the Pareto files carry the retrained results too

        write_pareto(run.study, run.run_dir)
    stopped = [r["trial"] for r in results if r["status"] == "stopped"]
    if stopped:
        raise RetrainStopped(f"trials {stopped} stopped at a checkpoint; rerun to resume")
    return results
