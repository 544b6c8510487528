"""Fault injection for the tests of failure handling, through the search's `before_training` seam.

`Faults({0: "raise", 1: "nan", 3: "hang"})` makes trial 0 raise, gives trial 1 NaN weights and keeps trial 3
training until the search is killed ("hang-after-N": after N training steps; "raise-after-N" raises there); "oom" raises torch's out-of-GPU-memory error. Run as a script, it is `sslc-search` with faults:
`python tests/faults.py hang:3 -- <sslc-search options>` (run as __main__, Ray ships the class by value).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import optuna
import torch


class Faults:
    def __init__(self, plan: dict[int, str]):
        self.plan = dict(plan)

    @classmethod
    def parse(cls, text: str) -> Faults:
        """'raise:0,nan:1' -> Faults({0: "raise", 1: "nan"})."""
        items = (item.partition(":") for item in text.split(",") if item)
        return cls({int(number): kind for kind, _, number in items})

    def __call__(self, trial_number: int, student: torch.nn.Module) -> None:
        kind = self.plan.get(trial_number)
        if kind == "raise":
            raise RuntimeError("injected fault")
        if kind == "oom":  # what torch raises when a CUDA allocation fails (testable without a GPU)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        if kind == "hang":  # a trial that is surely still training when the test kills the search
            while True:
                time.sleep(1)
        if kind and kind.startswith("hang-after-"):  # trains N steps (a rung), then hangs in the next one
            _after(student, int(kind.removeprefix("hang-after-")), _hang)
        if kind and kind.startswith("raise-after-"):  # trains N steps (a rung), then raises in the next one
            _after(student, int(kind.removeprefix("raise-after-")), _raise)
        if kind == "noise":  # a poor student: noise on every weight (a trial dominated at its first rung)
            generator = torch.Generator().manual_seed(trial_number)
            with torch.no_grad():
                for param in student.parameters():
                    param.add_(0.5 * torch.randn(param.shape, generator=generator))
        if kind == "nan":
            with torch.no_grad():
                next(student.parameters()).fill_(float("nan"))


class CrashBeforeStep:
    """A data-parallel retrain's `before_step(rank, step)`: worker `rank` dies (os._exit, no cleanup: to Ray Train a
    crashed worker) before it trains `step`, once Ray Train has recorded the checkpoint of the step before in
    `snapshot` (its checkpoint_manager_snapshot.json), so the run is killed at a known point."""

    def __init__(self, step: int, rank: int, snapshot: Path, timeout: float = 120.0):
        self.step, self.rank, self.snapshot, self.timeout = step, rank, Path(snapshot), timeout

    def recorded_step(self) -> int | None:
        try:
            latest = json.loads(self.snapshot.read_text()).get("latest_checkpoint_result") or {}
        except (OSError, ValueError):  # not written yet, or being written
            return None
        return (latest.get("metrics") or {}).get("step")

    def __call__(self, rank: int, step: int) -> None:
        if rank != self.rank or step != self.step:
            return
        deadline = time.monotonic() + self.timeout
        while self.recorded_step() != step - 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        os._exit(1)


def _after(student: torch.nn.Module, steps: int, fault) -> None:
    """The student's forward in training (train mode, gradients on) runs `fault` from step `steps` + 1 on: a
    multi-fidelity trial scored at a rung of `steps` and promoted is caught training on to the next."""
    calls = [0]

    def count(module, args):
        if module.training and torch.is_grad_enabled():
            calls[0] += 1
            if calls[0] > steps:
                fault()

    student.register_forward_pre_hook(count)


def _hang() -> None:
    while True:
        time.sleep(1)


def _raise() -> None:
    raise RuntimeError("injected fault after a rung")


def shipped_by_value() -> None:
    """Ray workers cannot import this test module: pickle its classes by value (as for a script's __main__)."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class ReplaySampler(optuna.samplers.RandomSampler):
    """Random, except that trial `n` gets exactly the params of trial `replay[n]` (a repeat of its config)."""

    def __init__(self, replay: dict[int, int], seed: int = 1):
        super().__init__(seed=seed)
        self.replay = replay

    def sample_independent(self, study, trial, name, distribution):
        source = self.replay.get(trial.number)
        if source is not None:
            return study.get_trials(deepcopy=False)[source].params[name]
        return super().sample_independent(study, trial, name, distribution)


if __name__ == "__main__":
    from sslc.cli.search import main

    plan, separator, *options = sys.argv[1:]
    assert separator == "--", "usage: faults.py KIND:TRIAL[,...] -- SSLC-SEARCH OPTIONS"
    raise SystemExit(main(options, before_training=Faults.parse(plan)))
