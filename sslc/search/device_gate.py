"""Latency measured while no other trial of the run uses the device: one shared / exclusive lock per device.

Trials hold the devices they use shared while they train and score (a node's CPU always, its GPU when they have
one); a latency measurement holds the measured device exclusively. A measurement that waits keeps new users
out, and every trainer lets go at its next report (`pause`) until the measurement is done, so a measurement
waits at most about a tenth of a trial's training, and trials keep training side by side otherwise. A measuring
trial holds no device while it waits (it measures before it trains), so the locks cannot deadlock; and every
hold is a lease its process renews, so one that dies (killed, out of memory) holds nothing up for long.

Ray has no lock between tasks of a job (its resources are booked per task, not per phase), so this is a small
async actor the search driver owns; the devices are named by node and device ("node/cpu", "node/cuda:<id>").
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import ray

from .artifacts import node_name

# A hold lapses when its process has not renewed it for this long (the process renews every RENEW_SECONDS).
LEASE_SECONDS = 30.0
RENEW_SECONDS = 5.0


class DeviceLocks:
    """Per device key, the holders of each kind (training users, the measurement, measurements waiting), each
    with the time its lease ends. Run as the `DeviceGate` actor: its methods are coroutines, so callers that
    wait never block the others."""

    def __init__(self, lease_seconds: float = LEASE_SECONDS):
        self.lease_seconds = lease_seconds
        self.users: dict[str, dict[str, float]] = {}
        self.measuring: dict[str, dict[str, float]] = {}
        self.waiting: dict[str, dict[str, float]] = {}
        self.condition: asyncio.Condition | None = None

    def _live(self, kind: dict, key: str) -> dict[str, float]:
        holders = kind.setdefault(key, {})
        now = time.monotonic()
        for holder in [h for h, until in holders.items() if until < now]:
            del holders[holder]  # its process stopped renewing: it died
        return holders

    def _open(self, key: str) -> bool:
        return not self._live(self.measuring, key) and not self._live(self.waiting, key)

    async def _wait(self, ready: Callable[[], bool]) -> None:
        """Wait (the condition held) until `ready()`; re-checked at least every RENEW_SECONDS for lapsed leases."""
        while not ready():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.condition.wait(), RENEW_SECONDS)

    async def _change(self, change: Callable[[], None]) -> None:
        if self.condition is None:  # made on the actor's event loop, not in __init__
            self.condition = asyncio.Condition()
        async with self.condition:
            change()
            self.condition.notify_all()

    async def _hold(self, kind: dict, key: str, holder: str, ready: Callable[[], bool]) -> None:
        await self._change(lambda: None)
        async with self.condition:
            await self._wait(ready)
            kind.setdefault(key, {})[holder] = time.monotonic() + self.lease_seconds

    async def share(self, key: str, holder: str) -> None:
        await self._hold(self.users, key, holder, lambda: self._open(key))

    async def unshare(self, key: str, holder: str) -> None:
        await self._change(lambda: self.users.get(key, {}).pop(holder, None))

    async def pause(self, key: str, holder: str) -> None:
        """At a trainer's report: when a measurement waits for `key`, let go of it until the measurement is done."""
        await self._change(lambda: None)
        if self._open(key):
            return
        await self.unshare(key, holder)
        await self.share(key, holder)

    async def exclusive(self, key: str, holder: str) -> None:
        await self._change(lambda: self.waiting.setdefault(key, {}).__setitem__(
            holder, time.monotonic() + self.lease_seconds))
        await self._hold(self.measuring, key, holder,
                         lambda: not self._live(self.users, key) and not self._live(self.measuring, key))
        await self._change(lambda: self.waiting[key].pop(holder, None))

    async def release(self, key: str, holder: str) -> None:
        await self._change(lambda: self.measuring.get(key, {}).pop(holder, None))

    async def renew(self, holder: str) -> None:
        until = time.monotonic() + self.lease_seconds
        for kind in (self.users, self.measuring, self.waiting):
            for holders in kind.values():
                if holder in holders:
                    holders[holder] = until


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
def _renewed(gate) -> Iterator[str]:
    """A holder id whose leases a thread of this process renews until the block ends."""
    holder, done = uuid.uuid4().hex, threading.Event()

    def renew():
        while not done.wait(RENEW_SECONDS):
            gate.renew.remote(holder)

    thread = threading.Thread(target=renew, daemon=True)
    thread.start()
    try:
        yield holder
    finally:
        done.set()


@contextlib.contextmanager
def measuring(gate, key: str) -> Iterator[None]:
    """Hold `key` alone (no trial trains on it) for a latency measurement; no gate: nothing to wait for."""
    if gate is None:
        yield
        return
    with _renewed(gate) as holder:
        ray.get(gate.exclusive.remote(key, holder))
        try:
            yield
        finally:
            ray.get(gate.release.remote(key, holder))


@contextlib.contextmanager
def training(gate, keys: list[str]) -> Iterator[Callable[[], None]]:
    """Use `keys` shared while training; yields `pause()`, to call at each report."""
    if gate is None:
        yield lambda: None
        return
    with _renewed(gate) as holder:
        ray.get([gate.share.remote(key, holder) for key in keys])
        try:
            yield lambda: ray.get([gate.pause.remote(key, holder) for key in keys])
        finally:
            ray.get([gate.unshare.remote(key, holder) for key in keys])
