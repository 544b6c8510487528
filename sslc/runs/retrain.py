"""Retrain chosen points of a search to completion: the full distillation schedule, resumable, measured again.

Each student is rebuilt exactly as its trial built it (`prepare_inputs(...).build_student`, same teacher, data,
importance scores and trainer settings; in an anytime run, extracted from the shared weights it was scored on),
then trained by `train_full` with its checkpoint under
`<run_dir>/retrain/<trial>/`, so an interrupted retrain continues where it stopped when run again. At the end the
held-out loss, params, MACs and latency are written to `result.json` there, recorded on the study (user attr
"retrain:<trial>"), and the weights saved in the export format (`student.pt`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from optuna.trial import TrialState

from sslc.compress import CompressionConfig
from sslc.data import LengthBucketBatchSampler
from sslc.errors import UserError
from sslc.files import write_json_atomically
from sslc.protocol import EvaluationProtocol
from sslc.trainers import TrainerConfig, train_full

from .export import RESULT_FILE
from .inputs import RunInputs, prepare_inputs, train_crops
from .record import RunRecord, open_run
from .student_file import WEIGHTS_FILE, save_student
from .study import record_retrain
from .trials import Outcome, TrialRecord

log = logging.getLogger("sslc.retrain")

# Full training is this many times the short trials' steps unless --steps / --epochs say otherwise.
DEFAULT_STEPS_FACTOR = 10
CHECKPOINTS_PER_RUN = 10
REPORTS_PER_RUN = 50
LATENCY_REPEATS = 5


class RetrainStopped(KeyboardInterrupt):
    """Retraining was asked to stop; the checkpoint written at the stop resumes it."""


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


def full_trainer_config(
    run: RunRecord,
    steps: int | None = None,
    epochs: int | None = None,
    device: str | None = None,
    batches_per_epoch: int | None = None,
) -> TrainerConfig:
    """The search's trainer settings, run for longer (and in this process: torch's own thread count).

    `batches_per_epoch` (of the run's training data) sets the report and checkpoint cadence for `epochs`.
    """
    check_length(steps, epochs)
    stored = run.record.trainer
    if not stored:
        raise UserError(f"run '{run.name}' records no trainer settings: was it written by sslc-search?")
    if run.record.protocol is None:
        # Its short trials were scored by an older rule: a retrained score would not be comparable with them.
        raise UserError(f"run '{run.name}' was made by an older sslc (no evaluation protocol recorded): search again")
    short = TrainerConfig.from_dict(stored)
    steps = steps if steps is not None else short.steps * DEFAULT_STEPS_FACTOR
    total = epochs * (batches_per_epoch or 1) if epochs is not None else steps
    return replace(
        short,
        steps=steps,
        epochs=epochs,
        num_threads=None,
        device=device or short.device,
        log_every=max(1, total // REPORTS_PER_RUN),
        checkpoint_every=max(1, min(short.checkpoint_every, total // CHECKPOINTS_PER_RUN)),
    ).validate()


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


def retrain_trial(
    run: RunRecord,
    trial: TrialRecord,
    trainer: TrainerConfig,
    context: RunInputs,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    """Train one trial's student to the end of `trainer`'s schedule (resuming from `out_dir`) and measure it.

    `should_stop()` is polled at every training report; when it says so, a checkpoint is written and
    `RetrainStopped` raised. A run whose result is already in `out_dir` for the same settings is not redone.
    """
    from sslc.compress.quantize import quantize_int8
    from sslc.metrics import count_macs, count_nonzero_params, count_params, measure_latency

    record = out_dir is None  # only the run's own retrain directory is recorded on the study
    out_dir = Path(out_dir) if out_dir is not None else run.retrain_dir(trial.number)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous = out_dir / RESULT_FILE
    if previous.is_file() and (out_dir / WEIGHTS_FILE).is_file():
        done = json.loads(previous.read_text())
        if done.get("status") == "completed" and done.get("trainer") == trainer.to_dict():
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

    def on_report(step: int, loss: float) -> bool:
        return bool(should_stop()) if should_stop is not None else False

    result = train_full(
        student, context.targets(), context.data.train, context.data.heldout, trainer, out_dir / "checkpoint",
        progress=progress, on_report=on_report, kept_layers=config.layers,
    )
    if result.status == "stopped":
        raise RetrainStopped(f"trial {trial.number} stopped at step {result.steps_done}; rerun to resume")

    seconds = run.record.budget_seconds
    search_threads = (run.record.trainer or {}).get("num_threads")
    student = student.cpu().eval()
    deployed = quantize_int8(student) if config.quantize == "int8" else student
    latency = measure_latency(deployed, seconds=seconds, warmup=1, repeats=LATENCY_REPEATS, threads=search_threads)
    summary = {
        "trial": trial.number,
        "status": result.status,
        "reason": result.reason,
        "steps": result.steps_done,
        "epochs": trainer.epochs,
        "heldout_loss": result.heldout_loss,
        "heldout_loss_by_target": result.heldout_loss_by_target,
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
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "trainer": trainer.to_dict(),
    }
    if result.status == "completed":
        provenance = {"run": run.name, "trial": trial.number, "weights": "retrained", "steps": result.steps_done}
        metrics = {k: summary[k] for k in ("macs", "params", "nonzero_params", "latency_ms", "heldout_loss")}
        save_student(out_dir / WEIGHTS_FILE, student, config.to_dict(), context.teacher_spec, provenance, metrics)
    write_json_atomically(out_dir / RESULT_FILE, {**summary, "curve": [list(p) for p in result.curve]})
    if record:
        _record(run, trial.number, summary)
    return summary


def _record(run: RunRecord, number: int, summary: dict) -> None:
    record_retrain(run.study, number, {k: v for k, v in summary.items() if k != "trainer"})
    run.reload()


def retrain(
    run_dir: str | os.PathLike,
    numbers: list[int] | None = None,
    pareto: bool = False,
    under_budget: bool = False,
    steps: int | None = None,
    epochs: int | None = None,
    device: str | None = None,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    say: Callable[[str], None] = print,
) -> list[dict]:
    """Retrain the chosen trials of the run in `run_dir` one after the other; returns their results."""
    check_length(steps, epochs)
    run = open_run(run_dir)
    chosen = select_trials(run, numbers, pareto, under_budget)
    trainer = full_trainer_config(run, steps, epochs, device)  # every check before the teacher is loaded
    context = prepare_context(run)
    if epochs is not None:  # reports and checkpoints follow the real epoch length
        sampler = LengthBucketBatchSampler(context.data.train.lengths, trainer.batch_size, seed=trainer.seed)
        trainer = full_trainer_config(run, steps, epochs, device, batches_per_epoch=len(sampler))
    length = f"{trainer.epochs} epochs" if trainer.epochs else f"{trainer.steps} steps"
    results = []
    for index, trial in enumerate(chosen, 1):
        say(f"[{index}/{len(chosen)}] retraining trial {trial.number} ({length}) in {run.retrain_dir(trial.number)}")
        result = retrain_trial(run, trial, trainer, context, progress=progress, should_stop=should_stop)
        if result.get("skipped"):
            say(f"trial {trial.number} was already retrained with these settings (delete its result.json to redo)")
        results.append(result)
    return results
