"""Which devices a search's trials get: `--gpus-per-trial auto` packs as many trials on a GPU as its memory holds.

Where Ray sees GPUs, every trial (and baseline, which runs as a Ray task with the same resources) reserves a
share of one: the share is 1 / (trials that fit), where what fits is the GPU's free memory divided by the
measured peak of one trial (two training steps of the space's largest config, as `TrainingLoop` trains it, on
the driver's GPU), capped by the CPUs each GPU has for its trials. Where Ray sees none, trials run on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sslc.errors import UserError
from sslc.metrics.latency import device_name
from sslc.search.inputs import RunInputs
from sslc.spaces import SearchSpace
from sslc.trainers import LiveTeacherTargets, PredictionHeads, TrainerConfig, resolve_layer_map
from sslc.trainers.distill import make_optimizer
from sslc.trainers.step import DistillationStep

from .settings import AUTO, SearchSettings

# What `max_memory_reserved` does not see: each trial's process holds its own CUDA context (cuBLAS/cuDNN
# workspaces included), about 0.5 GiB on recent GPUs and drivers.
CUDA_CONTEXT_BYTES = 512 * 1024**2
# Headroom over the measured peak: later batches differ (fragmentation, a held-out pass, the heads' fit).
MEMORY_MARGIN = 1.25
# Ray reads resource amounts to 4 decimals: a share is rounded down to that, so n shares never exceed one GPU.
_RAY_DECIMALS = 10_000


@dataclass
class TrialDevices:
    """The resources each trial reserves in Ray, and why (printed before the trials)."""

    cpus: float
    gpus: float
    note: str

    def resources(self) -> dict:
        return {"cpu": self.cpus, "gpu": self.gpus}


def visible_gpus() -> int:
    """CUDA GPUs this process sees (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def trials_per_gpu(trial_bytes: int, free_bytes: int, cpus_per_gpu: float, cpus_per_trial: float) -> int:
    """How many trials of `trial_bytes` each (context included) one GPU with `free_bytes` holds, at most as many
    as its `cpus_per_gpu` give `cpus_per_trial` each; at least 1."""
    by_memory = free_bytes // max(1, trial_bytes)
    by_cpus = math.floor(cpus_per_gpu / cpus_per_trial + 1e-9)
    return max(1, min(by_memory, by_cpus))


def gpu_share(trials: int) -> float:
    """The GPU share of one of `trials` trials on a GPU, as Ray can hold it."""
    return math.floor(_RAY_DECIMALS / trials) / _RAY_DECIMALS


def measure_trial_bytes(run: RunInputs, space: SearchSpace, trainer: TrainerConfig,
                        device: str | torch.device = "cuda") -> int:
    """GPU memory one trial needs on `device`: the allocator's peak over two training steps (the second holds the
    optimizer state) of the largest config of `space`, on a full batch of `trainer.crop_seconds` crops, with the
    margin and the process's CUDA context added."""
    device = torch.device(device)
    teacher = run.teacher
    config = space.largest(teacher.config)
    samples = round(trainer.crop_seconds * 16000)
    waves = torch.randn(trainer.batch_size, samples, generator=torch.Generator().manual_seed(0))
    lengths = torch.full((trainer.batch_size,), samples)
    student = run.build_student(config, quantize=False)
    layer_map = resolve_layer_map(trainer.layer_map, config.layers, student.config.num_layers,
                                  teacher.config.num_layers, trainer.targets)
    targets = LiveTeacherTargets(teacher, None, [t for _, t in layer_map]).get(None, waves, lengths)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    student = student.to(device).train()
    heads = PredictionHeads(layer_map, student.config.embed_dim, teacher.config.embed_dim,
                            student.config.residual_index).to(device)
    optimizer = make_optimizer([student, heads], trainer.lr, trainer.weight_decay)
    step = DistillationStep(student, heads, optimizer, None, trainer.grad_clip, device)
    for _ in range(2):
        step.train(waves, lengths, targets)
    peak = torch.cuda.max_memory_reserved(device) - before
    del step, optimizer, heads, student
    torch.cuda.empty_cache()
    return int(peak * MEMORY_MARGIN) + CUDA_CONTEXT_BYTES


def trial_devices(settings: SearchSettings, cluster: dict, run: RunInputs, space: SearchSpace,
                  trainer: TrainerConfig) -> TrialDevices:
    """What each trial reserves, given Ray's `cluster` resources: `--gpus-per-trial` as given, or resolved
    from "auto" (see the module). UserError for a request Ray could never schedule."""
    cpus, gpus = settings.cpus_per_trial, cluster.get("GPU", 0)
    if settings.gpus_per_trial != AUTO:
        share = float(settings.gpus_per_trial)
        if share > 0 and not gpus:
            raise UserError(f"--gpus-per-trial {share:g} asks for GPUs, but Ray sees none: use --gpus-per-trial "
                            "0 or auto, or a machine (cluster) with GPUs")
        where = f"{share:g} GPU each (--gpus-per-trial)" if share else "on the CPU (--gpus-per-trial 0)"
        result = TrialDevices(cpus, share, f"trials: {cpus:g} CPU, {where}")
    elif not gpus:
        result = TrialDevices(cpus, 0.0, f"trials: {cpus:g} CPU each, on the CPU (no GPU visible to Ray)")
    elif not visible_gpus():
        # A cluster whose GPUs this machine cannot see: nothing to measure on, so a whole GPU each.
        result = TrialDevices(cpus, 1.0, f"trials: {cpus:g} CPU and 1 GPU each (auto: this machine has no GPU to "
                              "measure a trial's memory on)")
    else:
        need = measure_trial_bytes(run, space, trainer, "cuda")
        free, total = torch.cuda.mem_get_info()
        cpus_per_gpu = cluster.get("CPU", 1) / gpus
        fit = trials_per_gpu(need, free, cpus_per_gpu, cpus)
        result = TrialDevices(cpus, gpu_share(fit), (
            f"trials: {cpus:g} CPU and {gpu_share(fit):g} GPU each (auto: {fit} per GPU; a trial of the largest "
            f"config needs {need / 2**30:.1f} GiB of the {free / 2**30:.1f} GiB free on {device_name('cuda')}, "
            f"{cpus_per_gpu:g} CPUs per GPU)"
        ))
    if settings.latency_device == "cuda" and not result.gpus:
        raise UserError("--latency-device cuda needs the trials on a GPU, but they get none (no GPU visible to Ray, "
                        "or --gpus-per-trial 0)")
    return result
