"""Distilling a student from its teacher: short search trials and full (resumable) training share one loop
(`TrainingLoop`, also the loop of once-for-all training) and one scorer (`Scorer`, the evaluation protocol)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from sslc.data import LengthBucketBatchSampler, SegmentDataset, collate
from sslc.data.loader import prefetched_batches
from sslc.errors import UserError
from sslc.models import SpeechEncoder
from sslc.protocol import mean_score, target_key
from sslc.trainers.checkpoint import (
    capture_rng,
    checkpoint_path,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from sslc.trainers.config import TrainerConfig
from sslc.trainers.heads import PredictionHeads, fit_heads_
from sslc.trainers.layer_map import resolve_layer_map, teacher_layers
from sslc.trainers.progress import TrainingProgress
from sslc.trainers.schedule import rung_schedule
from sslc.trainers.step import DistillationStep, StepOutcome
from sslc.trainers.targets import TeacherTargets

log = logging.getLogger("sslc.trainers")

ReportCallback = Callable[[int, float], bool]
# Called with the result scored at a rung of a multi-fidelity trial (not the last); True: train on to the next.
RungCallback = Callable[["ShortTrialResult"], bool]
CHECKPOINT_FORMAT = 1
# Settings that must not change across a resume: the weights saved so far were trained under them.
_RESUME_INVARIANTS = (
    "batch_size", "lr", "weight_decay", "warmup_fraction", "decay", "seed", "layer_map", "targets",
)


@dataclass
class ShortTrialResult:
    """status: "completed" | "stopped" (on_report asked to stop) | "nonfinite" (see `reason`).

    `curve` holds (step, mean training loss since the previous report); `heldout_loss` (the score: the mean of
    `heldout_loss_by_target`, keyed by 1-based teacher layer) is set only when completed.
    """

    status: str
    steps_done: int
    heldout_loss: float | None
    curve: list[tuple[int, float]]
    seconds_training: float
    reason: str | None = None
    layer_map: list[tuple[int, int]] = field(default_factory=list)
    heldout_loss_by_target: dict[str, float] | None = None
    # Wall seconds of the run's other parts: "head_fit", "heldout" (scoring), "data" (waiting for batches, inside
    # seconds_training), so a trial's time can be told apart from its training.
    seconds_parts: dict[str, float] = field(default_factory=dict)
    # (steps, held-out score, {target: loss}) at every rung scored so far (a multi-fidelity trial's; one entry
    # for a single-fidelity trial that completed).
    rung_scores: list[tuple[int, float, dict[str, float]]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FullTrainResult(ShortTrialResult):
    checkpoint: str | None = None  # the last checkpoint written (None if the run wrote none)
    resumed_from_step: int = 0
    # With `config.eval_every`: (step, held-out score, {target: loss}) of every validation, and the best of them,
    # whose student and heads are in `best_checkpoint` (BEST_NAME beside the last checkpoint).
    validation: list[tuple[int, float, dict[str, float]]] = field(default_factory=list)
    best_step: int | None = None
    best_checkpoint: str | None = None
    seconds_validating: float = 0.0


def run_short_trial(
    student: SpeechEncoder,
    targets: TeacherTargets,
    train_data: SegmentDataset,
    heldout_data: SegmentDataset,
    config: TrainerConfig,
    on_report: ReportCallback | None = None,
    kept_layers: Sequence[int] | None = None,
    rungs: Sequence[int] | None = None,
    on_rung: RungCallback | None = None,
) -> ShortTrialResult:
    """Train `student` (in place) for `config.steps` steps, then measure the held-out loss.

    `on_report(step, train_loss)` runs every `config.log_every` steps; returning True stops the trial early.
    `kept_layers` (0-based teacher layers the student's layers were copied from) picks which student layer
    predicts each of `config.targets` when `config.layer_map` is None (see `target_layer_map`).
    `rungs` (a multi-fidelity trial: increasing step counts, default `[config.steps]`): the student is scored at
    each; `on_rung(result so far)` then decides whether it trains on from where it is (weights, heads, optimizer,
    schedule and data position) to the next rung. The lr schedule restarts at each rung (`rung_schedule`).
    """
    rungs = list(rungs or [config.steps])
    run = _TrainingLoop(student, targets, train_data, heldout_data, config, kept_layers, total_steps=rungs[-1],
                        rungs=rungs)
    state = _State()
    scores, scoring = [], 0.0
    for rung in rungs:
        result = run.train(state, on_report, progress=False, checkpoint_dir=None, result_type=ShortTrialResult,
                           until=rung)
        if result.status == "completed":
            scores.append((rung, result.heldout_loss, result.heldout_loss_by_target))
            scoring += result.seconds_parts.get("heldout", 0.0)
            result.seconds_parts["heldout"] = scoring  # every rung's scoring, not only the last one's
        result.rung_scores = list(scores)
        if result.status != "completed" or rung == rungs[-1] or on_rung is None or not on_rung(result):
            return result
    raise AssertionError("unreachable: the last rung returns")


def train_full(
    student: SpeechEncoder,
    targets: TeacherTargets,
    train_data: SegmentDataset,
    heldout_data: SegmentDataset,
    config: TrainerConfig,
    checkpoint_dir: str | os.PathLike,
    progress: bool = True,
    on_report: ReportCallback | None = None,
    kept_layers: Sequence[int] | None = None,
    loop_class: type | None = None,
) -> FullTrainResult:
    """Train `student` for `config.epochs` epochs (or `config.steps` steps), checkpointing every
    `config.checkpoint_every` steps and at the end; when `checkpoint_dir` already holds a checkpoint, training
    resumes from it exactly (weights, heads, optimizer, schedule, RNG and data position). `loop_class`: a
    `StudentLoop` subclass (data-parallel training)."""
    total = full_run_steps(train_data, config)
    run = (loop_class or _TrainingLoop)(student, targets, train_data, heldout_data, config, kept_layers, total_steps=total)
    state = run.resume_from(checkpoint_dir)
    result = run.train(state, on_report, progress, Path(checkpoint_dir), result_type=FullTrainResult)
    result.resumed_from_step = state.resumed_from
    return result


def full_run_steps(train_data: SegmentDataset, config: TrainerConfig) -> int:
    """The length of a full run: `config.epochs` passes over `train_data` when set, else `config.steps`."""
    if config.epochs is None:
        return config.steps
    probe = LengthBucketBatchSampler(train_data.lengths, config.batch_size, seed=config.seed)
    return config.epochs * len(probe)


@dataclass
class _State:
    step: int = 0
    curve: list[tuple[int, float]] = field(default_factory=list)
    pending: list[float] = field(default_factory=list)  # losses since the last report
    seconds: float = 0.0
    resumed_from: int = 0
    validation: list[tuple[int, float, dict[str, float]]] = field(default_factory=list)  # see FullTrainResult
    best_step: int | None = None
    seconds_validating: float = 0.0


def start_run(config: TrainerConfig) -> torch.device:
    """What every training run does first: check the settings, set the thread count, seed every generator
    (before any head is made: a head that cannot start as identity is random). Returns the device."""
    config.validate()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    device = config.resolve_device()
    _seed_everything(config.seed)
    return device


class TrainingLoop:
    """The loop every distillation run shares: batches in bucketed order, one optimizer step per batch, the
    progress bar, reports, checkpoints and exact resumes. It trains `model` + `heads` (one AdamW over both, the
    warm-up/decay schedule) against `train_targets`; a subclass decides what one step does (`train_on`) and
    which model state a checkpoint holds (`model_state`, `load_model_state`, `resume_problems`).

    Call `start_run(config)` before building the heads and this loop."""

    kind: str | None = None  # recorded in checkpoints when set: a run never resumes another kind's checkpoint
    shard = (0, 1)  # (rank, world): the part of each batch this process reads and trains on (data-parallel)
    description = "distilling"  # the progress bar's label

    def __init__(self, model, heads, train_targets, train_data, config: TrainerConfig, total_steps: int,
                 rungs: Sequence[int] | None = None):
        """`rungs`: where a multi-fidelity trial is scored (see `rung_schedule`; default: `total_steps` only)."""
        self.config, self.total = config, total_steps
        self.device = config.resolve_device()
        self.train_targets = train_targets
        self.train_data = train_data
        self.model = model.to(self.device).train()
        self.heads = heads.to(self.device).train()
        self.optimizer = make_optimizer([self.model, self.heads], config.lr, config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, rung_schedule(list(rungs or [total_steps]), config.warmup_fraction, config.decay)
        )
        self.sampler = LengthBucketBatchSampler(train_data.lengths, config.batch_size, seed=config.seed)
        self.seconds_data = 0.0  # waiting for batches, over every `run` of this loop
        self.step = DistillationStep(
            self.model, self.heads, self.optimizer, self.scheduler, config.grad_clip, self.device, config.precision
        )

    # ---- what a subclass decides ------------------------------------------------------------------------------
    def train_on(self, indices: list[int]) -> StepOutcome:
        """One optimizer step on the training segments `indices`."""
        return self.step.train(*self.batch(indices))

    def model_state(self) -> dict:
        raise NotImplementedError

    def load_model_state(self, saved: dict) -> None:
        raise NotImplementedError

    def resume_problems(self, saved: dict) -> list[str]:
        """What differs between this run and the checkpoint `saved` (besides `_RESUME_INVARIANTS`)."""
        return []

    def after_step(self, state: _State, checkpoint_dir: Path | None) -> None:
        """Runs after every step, before its checkpoint (validation, in full training)."""

    def before_checkpoint(self, checkpoint_dir: Path) -> None:
        """Runs right before a checkpoint is written (what must be on disk with it)."""

    def write_checkpoint(self, checkpoint_dir: Path, state: _State) -> Path:
        """Write the checkpoint of `state` into `checkpoint_dir` (what it needs first too); returns its path."""
        self.before_checkpoint(checkpoint_dir)
        path = checkpoint_path(checkpoint_dir)
        save_checkpoint(path, self.snapshot(state))
        return path

    def batch(self, indices: list[int]):
        """(waves, lengths, targets) of the training segments `indices` (read ahead by the loader when they are
        the batch it handed the loop)."""
        ready = getattr(self, "_ready", None)
        if ready is not None and ready[0] is indices:
            waves, lengths = ready[1], ready[2]
        else:
            waves, lengths = collate([self.train_data[i] for i in indices])
        return waves, lengths, self.train_targets.get(indices, waves, lengths)

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def snapshot(self, state: _State) -> dict:
        saved = {
            "format": CHECKPOINT_FORMAT,
            "step": state.step,
            "total_steps": self.total,
            "curve": [list(point) for point in state.curve],
            "pending": list(state.pending),
            "seconds": state.seconds,
            "validation": [[s, v, t] for s, v, t in state.validation],
            "best_step": state.best_step,
            "seconds_validating": state.seconds_validating,
            "config": self.config.to_dict(),
            **self.model_state(),
            "heads": self.heads.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": capture_rng(),
        }
        if self.kind is not None:
            saved["kind"] = self.kind
        return saved

    def restore(self, saved: dict, state: _State) -> None:
        if saved.get("kind") != self.kind:
            raise UserError(
                f"cannot resume: the checkpoint is of a {saved.get('kind') or 'single-student'} run, not of a "
                f"{self.kind or 'single-student'} run; use a new checkpoint directory"
            )
        old = saved["config"]
        changed = [name for name in _RESUME_INVARIANTS if old.get(name) != self.config.to_dict()[name]]
        changed += self.resume_problems(saved)
        if changed:
            raise UserError(
                f"cannot resume: the checkpoint was trained with different {', '.join(sorted(set(changed)))}; "
                "use a new checkpoint directory or the original settings"
            )
        self.load_model_state(saved)
        self.heads.load_state_dict(saved["heads"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.sampler.load_state_dict(saved["sampler"])
        restore_rng(saved["rng"])
        state.step = state.resumed_from = int(saved["step"])
        state.curve = [(int(s), float(v)) for s, v in saved["curve"]]
        state.pending = [float(v) for v in saved["pending"]]
        state.seconds = float(saved["seconds"])
        state.validation = [(int(s), float(v), dict(t)) for s, v, t in saved.get("validation", [])]
        state.best_step = saved.get("best_step")
        state.seconds_validating = float(saved.get("seconds_validating", 0.0))

    def resume_from(self, checkpoint_dir: str | os.PathLike | None) -> _State:
        """A fresh state, or the state of the checkpoint in `checkpoint_dir` (everything restored from it)."""
        state = _State()
        saved = load_checkpoint(checkpoint_path(checkpoint_dir)) if checkpoint_dir is not None else None
        if saved is not None:
            self.restore(saved, state)
            log.info("resuming from step %d of %d (%s)", state.step, self.total, checkpoint_dir)
        return state

    # ---- the loop -------------------------------------------------------------------------------------------
    def run(self, state: _State, on_report, progress: bool, checkpoint_dir: Path | None, until: int | None = None):
        """Train until `until` (default `self.total`) steps, a stop asked by `on_report` or a non-finite step:
        (status, reason, the last checkpoint written or None). A later call goes on from where this one stopped."""
        config = self.config
        end = until or self.total
        status, reason = "completed", None
        written, last_written = None, 0.0
        batches = prefetched_batches(self.train_data, self.sampler, pin_memory=self.device.type == "cuda",
                                     shard=self.shard)
        bar = TrainingProgress(self.total, completed=state.step, enabled=progress, description=self.description)
        started = time.perf_counter()
        with bar, contextlib.closing(batches):
            while state.step < end:
                waiting = time.perf_counter()
                self._ready = next(batches)
                self.seconds_data += time.perf_counter() - waiting
                outcome = self.train_on(self._ready[0])
                if not outcome.finite:
                    status, reason = "nonfinite", f"{outcome.problem()} at step {state.step + 1}"
                    log.warning("stopping: %s", reason)
                    break
                state.step += 1
                state.pending.append(outcome.loss)
                bar.update(outcome.loss, outcome.audio_seconds)
                stop = False
                if state.step % config.log_every == 0 or state.step in (end, self.total):
                    mean = sum(state.pending) / len(state.pending)
                    state.pending.clear()
                    state.curve.append((state.step, mean))
                    stop = bool(on_report(state.step, mean)) if on_report is not None else False
                self.after_step(state, checkpoint_dir)
                # With checkpoint_seconds, a periodic checkpoint (after this run's first) waits until that long
                # has passed since the last: a large model's checkpoint can take longer than many steps.
                periodic = state.step % config.checkpoint_every == 0 and (
                    written is None or not config.checkpoint_seconds
                    or time.perf_counter() - last_written >= config.checkpoint_seconds
                )
                if checkpoint_dir is not None and (stop or state.step == self.total or periodic):
                    now = time.perf_counter()
                    state.seconds += now - started
                    started = now
                    written = self.write_checkpoint(checkpoint_dir, state)
                    last_written = time.perf_counter()
                if stop:
                    status = "stopped"
                    break
        state.seconds += time.perf_counter() - started
        self._ready = None
        self.step.release_gradients()  # the model outlives the run: it should not keep a step's gradients
        return status, reason, written


class _TrainingLoop(TrainingLoop):
    """One student and its prediction heads, trained and then scored by the evaluation protocol."""

    def __init__(self, student, targets, train_data, heldout_data, config, kept_layers, total_steps, rungs=None):
        start_run(config)
        self.scorer = Scorer.for_student(student, targets, heldout_data, config, kept_layers)
        self.layer_map = self.scorer.layer_map
        # Built before training starts, so cache building never counts as training time.
        train_targets = _targets_for(targets, train_data, self.layer_map)
        # Every student's heads start fitted to the targets (see fit_heads_), whatever its shape: the same start
        # for every candidate (for a copy of the teacher it is the identity the heads would otherwise start as).
        started = time.perf_counter()
        _fit_heads(student, self.scorer.heads, self.layer_map, train_targets, train_data, config)
        self.seconds_head_fit = time.perf_counter() - started
        super().__init__(student, self.scorer.heads, train_targets, train_data, config, total_steps, rungs)
        self.student = self.model

    def model_state(self) -> dict:
        return {
            "layer_map": [list(pair) for pair in self.layer_map],
            "student_config": self.student.config.to_json(),
            "student": self.student.state_dict(),
        }

    def resume_problems(self, saved: dict) -> list[str]:
        changed = []
        if saved["student_config"] != self.student.config.to_json():
            changed.append("student architecture")
        if [tuple(p) for p in saved["layer_map"]] != self.layer_map:
            changed.append("resolved layer map")
        return changed

    def load_model_state(self, saved: dict) -> None:
        self.student.load_state_dict(saved["student"])

    def after_step(self, state: _State, checkpoint_dir: Path | None) -> None:
        """Every `config.eval_every` steps and at the last: score by the protocol; keep the best weights."""
        every = self.config.eval_every
        if not every or checkpoint_dir is None or (state.step % every and state.step != self.total):
            return
        started = time.perf_counter()
        score, by_target = self.scorer.score()
        state.validation.append((state.step, score, by_target))
        best = {s: v for s, v, _ in state.validation}.get(state.best_step)
        if math.isfinite(score) and (best is None or score < best):
            state.best_step = state.step
            # Kept in memory and written with the next checkpoint (a resume replays to the same best).
            copy = {k: v.detach().to("cpu", copy=True) for k, v in self.student.state_dict().items()}
            heads = {k: v.detach().to("cpu", copy=True) for k, v in self.heads.state_dict().items()}
            self._best = {"step": state.step, "heldout_loss": score, "heldout_loss_by_target": by_target,
                          **self.model_state(), "student": copy, "heads": heads}
        state.seconds_validating += time.perf_counter() - started

    def before_checkpoint(self, checkpoint_dir: Path) -> None:
        if getattr(self, "_best", None) is not None:  # a new best since the last checkpoint
            save_checkpoint(Path(checkpoint_dir) / BEST_NAME, self._best)
            self._best = None

    def train(self, state: _State, on_report, progress: bool, checkpoint_dir: Path | None, result_type,
              until: int | None = None):
        status, reason, written = self.run(state, on_report, progress, checkpoint_dir, until)
        if checkpoint_dir is not None:
            self.before_checkpoint(checkpoint_dir)  # a run that ended without a checkpoint keeps its best too
        heldout, by_target = None, None
        parts = {"head_fit": self.seconds_head_fit, "data": self.seconds_data}
        started = time.perf_counter()
        if status == "completed" and state.validation and state.validation[-1][0] == state.step:
            heldout, by_target = state.validation[-1][1:]  # validated at the last step: the same weights
        elif status == "completed":
            heldout, by_target = self.scorer.score()
            parts["heldout"] = time.perf_counter() - started
            if not math.isfinite(heldout):
                status, reason, heldout, by_target = "nonfinite", f"held-out loss is {heldout}", None, None
        result = result_type(
            status=status,
            steps_done=state.step,
            heldout_loss=heldout,
            curve=list(state.curve),
            seconds_training=state.seconds,
            reason=reason,
            layer_map=list(self.layer_map),
            heldout_loss_by_target=by_target,
            seconds_parts=parts,
        )
        if isinstance(result, FullTrainResult):
            result.checkpoint = str(written or checkpoint_path(checkpoint_dir)) if checkpoint_dir else None
            result.validation, result.best_step = list(state.validation), state.best_step
            result.seconds_validating = state.seconds_validating
            if state.best_step is not None:
                result.best_checkpoint = str(Path(checkpoint_dir) / BEST_NAME)
        return result


StudentLoop = _TrainingLoop  # the name a subclass uses (see train_full's loop_class)
BEST_NAME = "best.pt"  # the best validated student and heads, beside the last checkpoint
# A student's heads start fitted on its first training batches (`fit_heads_`): at least HEAD_FIT_BATCHES, and more
# until they hold FIT_FRAMES_PER_CHANNEL (or the config's head_fit_frames_per_dim) frames per student channel (a
# wide student at short batches would otherwise be fitted on fewer frames than it has features), within one pass
# over the training data and HEAD_FIT_MAX_BATCHES.
# Every CHECK_EVERY-th clip is kept out of the fit to choose the start on (frames of other clips than the fit's).
HEAD_FIT_BATCHES, HEAD_FIT_MAX_BATCHES, FIT_FRAMES_PER_CHANNEL, CHECK_EVERY = 8, 64, 4, 4


@torch.no_grad()
def _fit_heads(student, heads, layer_map, train_targets, train_data, config: TrainerConfig) -> None:
    """Start the heads of a student fitted to the teacher targets on its first training batches (`fit_heads_`)."""
    sampler = LengthBucketBatchSampler(train_data.lengths, config.batch_size, seed=config.seed)
    device = config.resolve_device()
    was_training = student.training
    student.to(device).eval()
    needed = (config.head_fit_frames_per_dim or FIT_FRAMES_PER_CHANNEL) * max(head.in_features for head in heads.heads)
    fit = ([[] for _ in layer_map], [[] for _ in layer_map])  # (student states, targets) per head
    check = ([[] for _ in layer_map], [[] for _ in layer_map])
    frames = clips = 0
    for count, indices in enumerate(sampler):
        if count == HEAD_FIT_MAX_BATCHES or (count >= HEAD_FIT_BATCHES and frames >= needed):
            break
        waves, lengths = collate([train_data[i] for i in indices])
        batch = train_targets.get(indices, waves, lengths)
        output = student(waves.to(device), lengths.to(device))
        real = batch.frame_mask.to(device)
        for row in range(len(indices)):
            is_check = clips % CHECK_EVERY == CHECK_EVERY - 1
            clips += 1
            frames += 0 if is_check else int(real[row].sum())
            xs, ys = check if is_check else fit
            for j, (s, _) in enumerate(layer_map):
                xs[j].append(output.hidden_states[s][row][real[row]].float().cpu())
                ys[j].append(batch.hidden[j][row].to(device)[real[row]].float().cpu())
    student.train(was_training)
    if not check[0][0]:  # fewer training clips than CHECK_EVERY: check on the fit frames themselves
        check = fit

    def stacked(part):
        return tuple([torch.cat(tensors) for tensors in per_head] for per_head in part)

    chosen = fit_heads_(heads, stacked(fit), stacked(check))
    log.debug("heads start from %s (fit on %d frames)", chosen, frames)


class Scorer:
    """The evaluation protocol applied to one model: its layer map onto the targets, its prediction heads, and
    the exact held-out targets. Training and scoring share the heads, so what is trained is what is measured.

    `model(waves, lengths)` returns an `EncoderOutput`; `heads(hidden_states)` one prediction per pair of
    `layer_map` (in that order)."""

    def __init__(self, model, heads, layer_map, heldout_targets, heldout_data, config: TrainerConfig):
        self.layer_map = layer_map
        self.heldout_targets = heldout_targets
        self.heldout_data, self.config = heldout_data, config
        self.heads = heads
        self.student, self.device = model, config.resolve_device()

    @classmethod
    def for_layer_map(cls, model, heads, layer_map, targets: TeacherTargets, heldout_data, config) -> Scorer:
        return cls(model, heads, layer_map, _targets_for(targets, heldout_data, layer_map, exact=True),
                   heldout_data, config)

    @classmethod
    def for_student(cls, student, targets: TeacherTargets, heldout_data, config: TrainerConfig, kept_layers):
        """A student's scorer, with fresh heads (identity where widths match, see `PredictionHeads`)."""
        layer_map = resolve_layer_map(
            config.layer_map, kept_layers, student.config.num_layers, targets.depth, config.targets
        )
        heldout_targets = _targets_for(targets, heldout_data, layer_map, exact=True)
        heads = PredictionHeads(layer_map, student.config.embed_dim, targets.dim, student.config.residual_index)
        return cls(student, heads, layer_map, heldout_targets, heldout_data, config)

    def score(self) -> tuple[float, dict[str, float]]:
        """(mean over targets, {target layer: held-out loss})."""
        self.student.to(self.device)
        self.heads.to(self.device)
        step = DistillationStep(self.student, self.heads, device=self.device)
        losses = step.evaluate(self.heldout_data, self.heldout_targets, self.config.batch_size, self.config.eval_batches)
        by_target = {target_key(t): loss for (_, t), loss in zip(self.layer_map, losses)}
        return mean_score(by_target), by_target



def score_student(
    student: SpeechEncoder,
    targets: TeacherTargets,
    heldout_data: SegmentDataset,
    config: TrainerConfig,
    kept_layers: Sequence[int] | None = None,
) -> tuple[float, dict[str, float]]:
    """The held-out score of `student` as it is, with fresh (identity where widths match) heads and no training:
    (mean over targets, {target layer: loss}). A student copied whole from the teacher scores 0."""
    return Scorer.for_student(student, targets, heldout_data, config, kept_layers).score()


def score_at_start(
    student: SpeechEncoder,
    targets: TeacherTargets,
    train_data: SegmentDataset,
    heldout_data: SegmentDataset,
    config: TrainerConfig,
    kept_layers: Sequence[int] | None = None,
) -> tuple[float, dict[str, float]]:
    """The held-out score a trial of `student` starts from: its heads fitted as a trial's are (`_fit_heads`), no
    training step. (mean over targets, {target layer: loss})."""
    start_run(config)
    scorer = Scorer.for_student(student, targets, heldout_data, config, kept_layers)
    _fit_heads(student, scorer.heads, scorer.layer_map, _targets_for(targets, train_data, scorer.layer_map),
               train_data, config)
    return scorer.score()


def _targets_for(targets: TeacherTargets, dataset: SegmentDataset, layer_map, exact: bool = False) -> _Columns:
    needed = teacher_layers(layer_map)
    columns = [needed.index(t) for _, t in layer_map]  # the source layer each head predicts
    return _Columns(targets.source(dataset, needed, exact=exact), columns)


class _Columns:
    """A target source whose layers are re-ordered (and repeated) to follow the heads."""

    def __init__(self, source, columns: list[int]):
        self.source, self.columns = source, columns
        self.layers = [source.layers[c] for c in columns]

    def get(self, indices, waves=None, lengths=None):
        batch = self.source.get(indices, waves, lengths)
        return batch._replace(hidden=[batch.hidden[c] for c in self.columns])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(modules, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused where this torch supports it (about 3x faster steps than the per-tensor loop on CPU)."""
    groups = _param_groups(modules, weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # older torch, or a device without a fused kernel
        return torch.optim.AdamW(_param_groups(modules, weight_decay), lr=lr)


def _param_groups(modules, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and conv kernels only; biases and norm scales are left alone."""
    decayed, plain = [], []
    for module in modules:
        for param in module.parameters():
            if param.requires_grad:
                (decayed if param.ndim >= 2 else plain).append(param)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
