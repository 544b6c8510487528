"""Latency measured while no other trial of the run uses the device: one shared / exclusive lock per device.

Trials hold the devices they use shared while they train and score (a node's CPU always, its GPU when they have
one); a latency measurement holds the measured device exclusively. A measurement that waits keeps new users
out, and every trainer lets go at its next report (`pause`) until the measurement is done, so a measurement
waits at most about a tenth of a trial's training, and trials keep training side by side otherwise. A measuring
trial holds no device while it waits (it measures before it trains), so the locks cannot deadlock.

Ray has no lock between tasks of a job (its resources are booked per task, not per phase), so this is a small
async actor the search driver owns; the devices are named by node and device ("node/cpu", "node/cuda:<id>").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import ray

from .artifacts import node_name


class DeviceLocks:
    """Per device key: users (training), whether a measurement holds it, measurements waiting for it. Run as the
    `DeviceGate` actor (its methods are coroutines, so waiting callers never block the others)."""

    def __init__(self):
        self.users: dict[str, int] = {}
        self.measuring: set[str] = set()
        self.waiting: dict[str, int] = {}
        self.condition: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self.condition is None:  # made on the actor's event loop, not in __init__
            self.condition = asyncio.Condition()
        return self.condition

    def _open(self, key: str) -> bool:
        return key not in self.measuring and not self.waiting.get(key)

    async def share(self, key: str) -> None:
        condition = self._condition()
        async with condition:
            await condition.wait_for(lambda: self._open(key))
            self.users[key] = self.users.get(key, 0) + 1

    async def unshare(self, key: str) -> None:
        condition = self._condition()
        async with condition:
            self.users[key] -= 1
            condition.notify_all()

    async def pause(self, key: str) -> None:
        """At a trainer's report: when a measurement waits for `key`, let go of it until the measurement is done."""
        condition = self._condition()
        async with condition:
            if self._open(key):
                return
            self.users[key] -= 1
            condition.notify_all()
            await condition.wait_for(lambda: self._open(key))
            self.users[key] += 1

    async def exclusive(self, key: str) -> None:
        condition = self._condition()
        async with condition:
            self.waiting[key] = self.waiting.get(key, 0) + 1
            await condition.wait_for(lambda: not self.users.get(key) and key not in self.measuring)
            self.waiting[key] -= 1
            self.measuring.add(key)

    async def release(self, key: str) -> None:
        condition = self._condition()
        async with condition:
            self.measuring.discard(key)
            condition.notify_all()


DeviceGate = ray.remote(num_cpus=0)(DeviceLocks)


def start_gate():
    """The run's gate, owned by the driver (it lives as long as the search's Ray session)."""
    return DeviceGate.remote()


def used_devices() -> list[str]:
    """The keys of the devices this Ray worker trains on: its node's CPU, and its GPUs."""
    node = node_name()
    return [f"{node}/cpu"] + [f"{node}/cuda:{gpu}" for gpu in ray.get_gpu_ids()]


def measured_device(latency_device: str) -> str:
    """The key of the device this worker measures latency on (cuda: its first GPU)."""
    if latency_device == "cuda":
        return f"{node_name()}/cuda:{ray.get_gpu_ids()[0]}"
    return f"{node_name()}/cpu"


@contextlib.contextmanager
def measuring(gate, key: str) -> Iterator[None]:
    """Hold `key` alone (no trial trains on it) for a latency measurement; no gate: nothing to wait for."""
    if gate is None:
        yield
        return
    ray.get(gate.exclusive.remote(key))
    try:
        yield
    finally:
        ray.get(gate.release.remote(key))


@contextlib.contextmanager
def training(gate, keys: list[str]) -> Iterator:
    """Use `keys` shared while training; yields `pause()`, to call at each report."""
    if gate is None:
        yield lambda: None
        return
    ray.get([gate.share.remote(key) for key in keys])
    try:
        yield lambda: ray.get([gate.pause.remote(key) for key in keys])
    finally:
        ray.get([gate.unshare.remote(key) for key in keys])
