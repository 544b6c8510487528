"""Wall-clock latency of a forward pass: the median of several timed runs after warm-up.

Timings depend on the machine, its load and the thread count, so every result records how it was measured, and
`compare_latency` times several models interleaved in one run so that they share the same conditions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .macs import REFERENCE_SECONDS, SAMPLE_RATE, num_samples_for


@dataclass
class LatencyResult:
    """Median, min and max over `repeats` timed forward passes of `batch` waveforms of `seconds` each."""

    median_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    batch: int
    seconds: float
    device: str
    torch_threads: int
    warmup: int = 0  # untimed passes before the timed ones
    # How busy the machine was: the 1-minute load average when the timing ended (None where the OS has none) and
    # the CPUs it is spread over. A trial timed while other trials train reads slower than an idle sslc-info.
    load_average: float | None = None
    cpus: int | None = None
    device_name: str = ""  # the GPU's or CPU's model name (see `device_name`)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def conditions(self) -> dict:
        """How it was measured, without the timings (what a trial records beside its latency)."""
        return {k: v for k, v in self.as_dict().items() if not k.endswith("_ms")}


def describe_conditions(conditions: dict) -> str:
    """A `LatencyResult.conditions` dict in words, e.g. "median of 5 after 2 warm-up, 1 x 10 s on cpu, 2 torch
    threads, load 1.9 on 16 CPUs"; keys an older record lacks are left out."""
    parts = [f"median of {conditions['repeats']}" + (f" after {conditions['warmup']} warm-up"
                                                      if conditions.get("warmup") is not None else "")]
    on = conditions["device"] + (f" ({conditions['device_name']})" if conditions.get("device_name") else "")
    parts.append(f"{conditions['batch']} x {conditions['seconds']:g} s on {on}")
    parts.append(f"{conditions['torch_threads']} torch thread(s)")
    if conditions.get("load_average") is not None:
        parts.append(f"load {conditions['load_average']:.1f} on {conditions.get('cpus') or '?'} CPUs")
    return ", ".join(parts)


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not on Windows
        return None


def device_name(device: str | torch.device) -> str:
    """The model name of `device`: the GPU's (CUDA), or the CPU's as the kernel reports it."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:  # Linux; Python has no portable CPU model name (platform.processor() is empty there)
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def _check(seconds: float, batch: int, warmup: int, repeats: int, threads: int | None) -> None:
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")


@contextlib.contextmanager
def _num_threads(threads: int | None) -> Iterator[int]:
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _prepared(models: dict[str, nn.Module], device: torch.device) -> Iterator[None]:
    """Models in eval mode on `device` for the timing; their device and mode are restored afterwards."""
    saved = {}
    for name, model in models.items():
        first = next(model.parameters(), None)
        saved[name] = (first.device if first is not None else None, model.training)
        model.to(device).eval()
    try:
        yield
    finally:
        for name, model in models.items():
            original_device, training = saved[name]
            if original_device is not None:
                model.to(original_device)
            model.train(training)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(model: nn.Module, waveforms: torch.Tensor, device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    model(waveforms)
    _synchronize(device)
    return (time.perf_counter() - start) * 1000.0


def compare_latency(
    models: dict[str, nn.Module],
    seconds: float = REFERENCE_SECONDS,
    batch: int = 1,
    device: str | torch.device = "cpu",
    warmup: int = 2,
    repeats: int = 5,
    threads: int | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> dict[str, LatencyResult]:
    """Latency of several models measured in one interleaved run, so they can be compared fairly.

    Every model is warmed up, then each repeat times every model once on the same input, with the order
    reversed on every other repeat so that no model always runs first (or right after the same neighbour).
    `threads` sets torch's CPU thread count for the run (restored afterwards).
    """
    _check(seconds, batch, warmup, repeats, threads)
    if not models:
        return {}
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    waveforms = torch.randn(batch, num_samples_for(seconds, sample_rate), generator=generator).to(device)
    names, name_of_device = list(models), device_name(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    with _num_threads(threads) as used_threads, _prepared(models, device), torch.inference_mode():
        for name in names:
            for _ in range(warmup):
                models[name](waveforms)
        _synchronize(device)
        for repeat in range(repeats):
            for name in names if repeat % 2 == 0 else reversed(names):
                times[name].append(_time_once(models[name], waveforms, device))
    load = _load_average()
    return {
        name: LatencyResult(
            median_ms=statistics.median(samples),
            min_ms=min(samples),
            max_ms=max(samples),
            repeats=repeats,
            batch=batch,
            seconds=seconds,
            device=str(device),
            torch_threads=used_threads,
            warmup=warmup,
            load_average=load,
            cpus=os.cpu_count(),
            device_name=name_of_device,
        )
        for name, samples in times.items()
    }


def measure_latency(
    model: nn.Module,
    seconds: float = REFERENCE_SECONDS,
    batch: int = 1,
    device: str | torch.device = "cpu",
    warmup: int = 2,
    repeats: int = 5,
    threads: int | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> LatencyResult:
    """Median wall-clock time of `repeats` forward passes (after `warmup` untimed ones) under inference mode."""
    return compare_latency({"model": model}, seconds, batch, device, warmup, repeats, threads, sample_rate)[
        "model"
    ]
