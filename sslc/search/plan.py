"""The plan a search prints before any work: the corpus, the teacher's work for its targets, the cache against the
free disk, each trial's compute, the devices, and (where a GPU is present) a projection from a few timed steps.

It also decides where the training targets live: in the on-disk cache when it fits the free disk (and
`--cache-limit`), else computed live on each trial's device (`LiveTeacherTargets`); the held-out targets, which
every score is measured against, are always cached (HELDOUT_SEGMENTS of them at most), so a search whose held-out
targets alone do not fit is refused before any work.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sslc.budget import Budget
from sslc.data import SAMPLE_RATE, SegmentDataset
from sslc.errors import UserError
from sslc.metrics import count_macs, format_macs
from sslc.search.inputs import RunInputs
from sslc.trainers import TrainerConfig
from sslc.trainers.cache import is_complete, layer_dir_name
from sslc.trainers.distill import HEAD_FIT_BATCHES
from sslc.trainers.targets import EXACT_DTYPE, TRAIN_DTYPE

from .sizes import format_size, parse_size

# A training step is about three forward passes of the student (forward, and a backward of twice its cost).
TRAIN_STEP_FORWARDS = 3
# Disk the cache leaves free: a search must not fill the disk its study and checkpoints are written to.
DISK_RESERVE = 0.05
# Steps timed on the GPU for the projection (after one untimed warm-up step).
TIMED_STEPS = 3


@dataclass
class Plan:
    lines: list[str]
    live_training: bool  # training targets computed live on each trial's device
    train_bytes: int  # the training targets' cache (still to write)
    heldout_bytes: int  # the held-out targets' cache (still to write)
    free_bytes: int
    limit_bytes: int | None
    devices: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join(self.lines)


def _teacher_macs(config, lengths) -> int:
    """Teacher forward MACs over crops of these lengths (counted once per distinct length)."""
    values, counts = np.unique(np.asarray(lengths, dtype=np.int64), return_counts=True)
    return int(sum(int(c) * count_macs(config, num_samples=int(n)).total for n, c in zip(values, counts)))


def _cache_bytes(context: RunInputs, dataset: SegmentDataset, layers, exact: bool) -> int:
    """Bytes the targets of `dataset` at `layers` take on disk, less the layers already complete there."""
    config = context.teacher.config
    targets = context.targets()
    dtype = EXACT_DTYPE if exact else TRAIN_DTYPE
    directory = Path(targets.cache_root) / targets.cache_key(dataset, dtype)
    missing = [t for t in layers if not is_complete(directory / layer_dir_name(t))]
    frames = sum(config.frames_for(n) for n in dataset.lengths)
    return frames * config.embed_dim * np.dtype(dtype).itemsize * len(missing)


def _free_bytes(path: Path) -> int:
    path = Path(path)
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def devices_found() -> list[str]:
    """The accelerators torch sees here (name and memory), or the CPU."""
    if torch.cuda.is_available():
        found = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            found.append(f"cuda:{index} {props.name} ({props.total_memory / 1024**3:.0f} GiB)")
        return found
    return [f"cpu ({torch.get_num_threads()} threads here; no CUDA GPU)"]


def plan_search(
    context: RunInputs, trainer: TrainerConfig, budget: Budget, budget_share: float, layers, trials: int,
    cache_limit: str | None = None, measure=None,
) -> Plan:
    """The plan of a search (see the module's doc); `budget_share`: the budget as a share of the teacher's MACs
    (the students' per-crop compute is taken at the budget: an upper bound for the configs within it);
    `measure(context, trainer, budget)` -> seconds of one training step on the GPU (None: `time_training_steps`).
    UserError when not even the held-out targets fit."""
    data, config = context.data, context.teacher.config
    files = data.files
    hours = sum(f.num_samples for f in files) / SAMPLE_RATE / 3600
    train_macs = _teacher_macs(config, data.train.lengths)
    heldout_macs = _teacher_macs(config, data.heldout.lengths)
    train_bytes = _cache_bytes(context, data.train, layers, exact=False)
    heldout_bytes = _cache_bytes(context, data.heldout, layers, exact=True)
    free = _free_bytes(context.cache_dir)
    limit = parse_size(cache_limit) if cache_limit else None
    room = int(free * (1 - DISK_RESERVE))
    room = min(room, limit) if limit is not None else room
    why_room = f"{format_size(free)} free on the disk of {context.cache_dir}" + (
        f", --cache-limit {format_size(limit)}" if limit is not None else "")
    if heldout_bytes > room:
        raise UserError(
            f"the teacher targets cannot be stored: the held-out targets alone need {format_size(heldout_bytes)} "
            f"({why_room}); free disk space or raise --cache-limit"
        )
    live = train_bytes + heldout_bytes > room
    per_crop = budget_share * train_macs / max(1, len(data.train))
    steps_crops = trainer.steps * trainer.batch_size
    training = TRAIN_STEP_FORWARDS * per_crop * steps_crops
    scoring = budget_share * heldout_macs
    head_fit = per_crop * min(HEAD_FIT_BATCHES * trainer.batch_size, len(data.train))
    lines = [
        f"plan: corpus {len(files)} files, {hours:.3g} h of audio ({len(data.train)} training crops, "
        f"{len(data.heldout)} held-out segments)",
        f"plan: teacher forward for the targets: {format_macs(train_macs + heldout_macs)}MACs "
        f"({format_macs(train_macs)} training, {format_macs(heldout_macs)} held-out), before the first trial",
        f"plan: target cache {format_size(train_bytes + heldout_bytes)} still to write ({format_size(train_bytes)} training "
        f"fp16, {format_size(heldout_bytes)} held-out fp32); {why_room}",
    ]
    if live:
        lines.append(
            f"plan: training targets computed live on each trial's device: their cache ({format_size(train_bytes)}) would "
            f"not fit ({why_room}); each trial also runs the teacher over its {steps_crops} crops "
            f"({format_macs(train_macs)}MACs); held-out targets cached"
        )
    lines.append(
        f"plan: per trial (at most, at the budget): training {format_macs(training)}MACs ({trainer.steps} steps x "
        f"{trainer.batch_size} crops), held-out {format_macs(scoring)}MACs, head fit {format_macs(head_fit)}MACs"
    )
    devices = devices_found()
    lines.append(f"plan: devices: {'; '.join(devices)}")
    if torch.cuda.is_available():
        step = (measure or time_training_steps)(context, trainer, budget)
        # Held-out and head-fit passes are forward only: a third of a training step per crop.
        extra = (len(data.heldout) + HEAD_FIT_BATCHES * trainer.batch_size) / (TRAIN_STEP_FORWARDS * trainer.batch_size)
        per_trial = step * (trainer.steps + extra)
        gpus = torch.cuda.device_count()
        lines.append(
            f"plan: projected from {TIMED_STEPS} timed steps on cuda:0 ({step * 1000:.0f} ms a step, at the budget): "
            f"{per_trial:.0f} s a trial, {trials} trials {trials * per_trial / 3600:.2f} GPU-hours, "
            f"~{trials * per_trial / gpus / 3600:.2f} h of wall time on {gpus} GPU(s), one trial per GPU"
        )
    return Plan(lines, live, train_bytes, heldout_bytes, free, limit, devices)


def time_training_steps(context: RunInputs, trainer: TrainerConfig, budget: Budget, device: str = "cuda") -> float:
    """Seconds of one training step on `device` of the largest uniformly pruned student within the budget (the
    configs within it cost at most about as much), against live teacher targets: the mean of TIMED_STEPS steps
    after a warm-up step."""
    from sslc.data import collate
    from sslc.trainers.distill import make_optimizer
    from sslc.trainers.heads import PredictionHeads
    from sslc.trainers.layer_map import resolve_layer_map
    from sslc.trainers.step import DistillationStep

    from .baselines import uniform_to_budget

    teacher = context.teacher.config
    config = uniform_to_budget(teacher, budget.max_macs, budget.seconds, budget.convention)
    if config is None:
        return float("nan")
    student = context.build_student(config, quantize=False).to(device).train()
    layer_map = resolve_layer_map(None, config.layers, student.config.num_layers, teacher.num_layers, trainer.targets)
    heads = PredictionHeads(layer_map, student.config.embed_dim, teacher.embed_dim,
                            student.config.residual_index).to(device)
    step = DistillationStep(student, heads, make_optimizer([student, heads], trainer.lr, trainer.weight_decay),
                            device=device)
    live = context.targets(device=device)
    live.live_training = True
    source = live.source(context.data.train, sorted({t for _, t in layer_map}))
    columns = [source.layers.index(t) for _, t in layer_map]
    indices = list(range(min(trainer.batch_size, len(context.data.train))))
    waves, lengths = collate([context.data.train[i] for i in indices])
    batch = source.get(indices, waves, lengths)
    batch = batch._replace(hidden=[batch.hidden[c] for c in columns])
    try:
        step.train(waves, lengths, batch)  # warm-up: kernels, allocator
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(TIMED_STEPS):
            step.train(waves, lengths, batch)
        _synchronize(device)
        return (time.perf_counter() - started) / TIMED_STEPS
    finally:
        context.teacher.to("cpu")  # the teacher travels to the trials from the CPU


def _synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
