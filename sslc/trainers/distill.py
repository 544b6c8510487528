"""Distilling a student from its teacher: short search trials and full (resumable) training share one loop."""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from sslc.data import LengthBucketBatchSampler, SegmentDataset, collate
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
from sslc.trainers.heads import PredictionHeads
from sslc.trainers.layer_map import resolve_layer_map, teacher_layers
from sslc.trainers.progress import TrainingProgress
from sslc.trainers.schedule import warmup_decay
from sslc.trainers.step import DistillationStep
from sslc.trainers.targets import TeacherTargets

log = logging.getLogger("sslc.trainers")

ReportCallback = Callable[[int, float], bool]
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

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FullTrainResult(ShortTrialResult):
    checkpoint: str | None = None  # the last checkpoint written (None if the run wrote none)
    resumed_from_step: int = 0


def run_short_trial(
    student: SpeechEncoder,
    targets: TeacherTargets,
    train_data: SegmentDataset,
    heldout_data: SegmentDataset,
    config: TrainerConfig,
    on_report: ReportCallback | None = None,
    kept_layers: Sequence[int] | None = None,
) -> ShortTrialResult:
    """Train `student` (in place) for `config.steps` steps, then measure the held-out loss.

    `on_report(step, train_loss)` runs every `config.log_every` steps; returning True stops the trial early.
    `kept_layers` (0-based teacher layers the student's layers were copied from) picks which student layer
    predicts each of `config.targets` when `config.layer_map` is None (see `target_layer_map`).
    """
    run = _TrainingLoop(student, targets, train_data, heldout_data, config, kept_layers, total_steps=config.steps)
    state = _State()
    return run.train(state, on_report, progress=False, checkpoint_dir=None, result_type=ShortTrialResult)


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
) -> FullTrainResult:
    """Train `student` for `config.epochs` epochs (or `config.steps` steps), checkpointing every
    `config.checkpoint_every` steps and at the end; when `checkpoint_dir` already holds a checkpoint, training
    resumes from it exactly (weights, heads, optimizer, schedule, RNG and data position)."""
    probe = LengthBucketBatchSampler(train_data.lengths, config.batch_size, seed=config.seed)
    total = config.epochs * len(probe) if config.epochs is not None else config.steps
    run = _TrainingLoop(student, targets, train_data, heldout_data, config, kept_layers, total_steps=total)
    state = _State()
    saved = load_checkpoint(checkpoint_path(checkpoint_dir))
    if saved is not None:
        run.restore(saved, state)
        log.info("resuming from step %d of %d (%s)", state.step, total, checkpoint_dir)
    result = run.train(state, on_report, progress, Path(checkpoint_dir), result_type=FullTrainResult)
    result.resumed_from_step = state.resumed_from
    return result


@dataclass
class _State:
    step: int = 0
    curve: list[tuple[int, float]] = field(default_factory=list)
    pending: list[float] = field(default_factory=list)  # losses since the last report
    seconds: float = 0.0
    resumed_from: int = 0


class _TrainingLoop:
    """The pieces of one training run, built the same way for fresh starts and resumes."""

    def __init__(self, student, targets, train_data, heldout_data, config, kept_layers, total_steps):
        config.validate()
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        self.config, self.total = config, total_steps
        self.device = config.resolve_device()
        _seed_everything(config.seed)  # before the heads are made: a head that cannot start as identity is random
        self.scorer = _Scorer(student, targets, heldout_data, config, kept_layers)
        self.layer_map = self.scorer.layer_map
        # Built before training starts, so cache building never counts as training time.
        self.train_targets = _targets_for(targets, train_data, self.layer_map)
        self.train_data = train_data

        self.heads = self.scorer.heads
        self.student = student.to(self.device).train()
        self.heads.to(self.device).train()
        self.optimizer = make_optimizer([self.student, self.heads], config.lr, config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_decay(total_steps, config.warmup_fraction, config.decay)
        )
        self.sampler = LengthBucketBatchSampler(train_data.lengths, config.batch_size, seed=config.seed)
        self.step = DistillationStep(
            self.student, self.heads, self.optimizer, self.scheduler, config.grad_clip, self.device
        )

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def snapshot(self, state: _State) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": state.step,
            "total_steps": self.total,
            "curve": [list(point) for point in state.curve],
            "pending": list(state.pending),
            "seconds": state.seconds,
            "config": self.config.to_dict(),
            "layer_map": [list(pair) for pair in self.layer_map],
            "student_config": self.student.config.to_json(),
            "student": self.student.state_dict(),
            "heads": self.heads.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": capture_rng(),
        }

    def restore(self, saved: dict, state: _State) -> None:
        old = saved["config"]
        changed = [name for name in _RESUME_INVARIANTS if old.get(name) != self.config.to_dict()[name]]
        if saved["student_config"] != self.student.config.to_json():
            changed.append("student architecture")
        if [tuple(p) for p in saved["layer_map"]] != self.layer_map:
            changed.append("resolved layer map")
        if changed:
            raise UserError(
                f"cannot resume: the checkpoint was trained with different {', '.join(sorted(set(changed)))}; "
                "use a new checkpoint directory or the original settings"
            )
        self.student.load_state_dict(saved["student"])
        self.heads.load_state_dict(saved["heads"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.sampler.load_state_dict(saved["sampler"])
        restore_rng(saved["rng"])
        state.step = state.resumed_from = int(saved["step"])
        state.curve = [(int(s), float(v)) for s, v in saved["curve"]]
        state.pending = [float(v) for v in saved["pending"]]
        state.seconds = float(saved["seconds"])

    # ---- the loop -------------------------------------------------------------------------------------------
    def train(self, state: _State, on_report, progress: bool, checkpoint_dir: Path | None, result_type):
        config = self.config
        status, reason = "completed", None
        written = None
        batches = _endless(self.sampler)
        bar = TrainingProgress(self.total, completed=state.step, enabled=progress)
        started = time.perf_counter()
        with bar:
            while state.step < self.total:
                indices = next(batches)
                waves, lengths = collate([self.train_data[i] for i in indices])
                outcome = self.step.train(waves, lengths, self.train_targets.get(indices, waves, lengths))
                if not outcome.finite:
                    status, reason = "nonfinite", f"{outcome.problem()} at step {state.step + 1}"
                    log.warning("stopping: %s", reason)
                    break
                state.step += 1
                state.pending.append(outcome.loss)
                bar.update(outcome.loss, outcome.audio_seconds)
                stop = False
                if state.step % config.log_every == 0 or state.step == self.total:
                    mean = sum(state.pending) / len(state.pending)
                    state.pending.clear()
                    state.curve.append((state.step, mean))
                    stop = bool(on_report(state.step, mean)) if on_report is not None else False
                if checkpoint_dir is not None and (
                    stop or state.step == self.total or state.step % config.checkpoint_every == 0
                ):
                    now = time.perf_counter()
                    state.seconds += now - started
                    started = now
                    written = checkpoint_path(checkpoint_dir)
                    save_checkpoint(written, self.snapshot(state))
                if stop:
                    status = "stopped"
                    break
        state.seconds += time.perf_counter() - started
        self.step.release_gradients()  # the student outlives the run: it should not keep a step's gradients

        heldout, by_target = None, None
        if status == "completed":
            heldout, by_target = self.scorer.score()
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
        )
        if isinstance(result, FullTrainResult):
            result.checkpoint = str(written or checkpoint_path(checkpoint_dir)) if checkpoint_dir else None
        return result



class _Scorer:
    """The evaluation protocol applied to one student: its layer map onto the targets, its prediction heads, and
    the exact held-out targets. Training and scoring share the heads, so what is trained is what is measured."""

    def __init__(self, student, targets: TeacherTargets, heldout_data, config: TrainerConfig, kept_layers):
        self.layer_map = resolve_layer_map(
            config.layer_map, kept_layers, student.config.num_layers, targets.depth, config.targets
        )
        self.heldout_targets = _targets_for(targets, heldout_data, self.layer_map, exact=True)
        self.heldout_data, self.config = heldout_data, config
        self.heads = PredictionHeads(
            self.layer_map, student.config.embed_dim, targets.dim, student.config.residual_index
        )
        self.student, self.device = student, config.resolve_device()

    def score(self) -> tuple[float, dict[str, float]]:
        """(mean over targets, {target layer: held-out loss})."""
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
    scorer = _Scorer(student, targets, heldout_data, config, kept_layers)
    student.to(scorer.device)
    scorer.heads.to(scorer.device)
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


def _endless(sampler: LengthBucketBatchSampler) -> Iterator[list[int]]:
    while True:  # the sampler moves to the next epoch by itself at the end of each pass
        yield from sampler


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
