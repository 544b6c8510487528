"""Which devices trials get (CPU-testable: the CUDA queries are mocked), the latency gate, and one search on a
fake GPU where a trial runs out of GPU memory."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import ray
import torch
from faults import Faults, shipped_by_value
from optuna.trial import TrialState

from sslc.cli.search import main as search_main
from sslc.compress import compress
from sslc.errors import UserError
from sslc.metrics import measure_latency
from sslc.models.teachers import load_teacher
from sslc.runs.storage import load_study
from sslc.runs.trials import Outcome, outcome_of
from sslc.search import device_gate, devices, plan, runner
from sslc.search.device_gate import DeviceLocks
from sslc.search.inputs import RunInputs
from sslc.search.runner import SearchSettings, run_search, trainer_config
from sslc.search.trial import train_baseline
from sslc.spaces import SearchSpace
from sslc.trainers import default_targets
from sslc.trainers import step as step_module
from sslc.trainers import targets as targets_module

GiB = 2**30
RESOURCE_LOG = "SSLC_TEST_RESOURCE_LOG"


def _settings(tmp_path, **overrides):
    base = dict(teacher="random:tiny", data="demo", budget="100%", trials=2, steps=4, batch_size=2, crop_seconds=1.0,
                name="devices", run_dir=tmp_path / "devices", latency_repeats=1, baselines=False, quiet=True,
                sampler="random")
    return SearchSettings(**{**base, **overrides})


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch in this process sees one CUDA GPU (`fake_cuda["free"]` bytes free) without one."""
    state = {"free": 10 * GiB, "total": 16 * GiB, "peak": 3 * GiB}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (state["free"], state["total"]))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU 16GB")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: state["peak"])
    return state


def test_a_trial_needs_the_peak_of_a_training_step_of_the_largest_config(tmp_path, fake_cuda, monkeypatch):
    teacher = load_teacher("random:tiny")
    run = RunInputs("random:tiny", teacher, None, tmp_path, 1.0, 0)
    space = SearchSpace.load("combined")
    trained = []
    original = step_module.DistillationStep.train

    def watched(self, waves, lengths, targets):
        trained.append((self.student.config.to_json(), tuple(waves.shape), len(targets.hidden)))
        return original(self, waves, lengths, targets)

    monkeypatch.setattr(step_module.DistillationStep, "train", watched)
    trainer = trainer_config(_settings(tmp_path, batch_size=3, crop_seconds=0.5))
    need = devices.measure_trial_bytes(run, space, trainer, device="cpu")  # the step runs; memory is mocked
    largest = compress(teacher, space.largest(teacher.config)).config.to_json()
    # Two steps (the second holds the optimizer state), of the largest config, on a full batch of full crops,
    # against the protocol's default targets.
    assert trained == [(largest, (3, 8000), len(default_targets(teacher.config.num_layers)))] * 2
    assert need == int(3 * GiB * devices.MEMORY_MARGIN) + devices.CUDA_CONTEXT_BYTES


def test_auto_packs_as_many_trials_per_gpu_as_fit_capped_by_the_cpus(tmp_path, fake_cuda, monkeypatch):
    need = 3 * GiB
    monkeypatch.setattr(devices, "measure_trial_bytes", lambda *args, **kwargs: need)
    settings = _settings(tmp_path, cpus_per_trial=1.0)
    # 10 GiB free / 3 GiB: 3 trials fit; 16 CPUs per GPU allow 16.
    got = devices.trial_devices(settings, {"CPU": 16, "GPU": 1}, None, None, None)
    assert (got.cpus, got.gpus) == (1.0, 0.3333) and "3 per GPU" in got.note and "Fake GPU 16GB" in got.note
    assert 3 * got.gpus <= 1 < 4 * got.gpus
    # 2 CPUs per GPU: 2 trials of 1 CPU, although memory holds 3.
    assert devices.trial_devices(settings, {"CPU": 4, "GPU": 2}, None, None, None).gpus == 0.5
    # Memory for less than one: still one per GPU (it may fail with "out of GPU memory", recorded as such).
    fake_cuda["free"] = 2 * GiB
    assert devices.trial_devices(settings, {"CPU": 16, "GPU": 1}, None, None, None).gpus == 1.0
    assert [devices.trials_per_gpu(need, free * GiB, 8, 0.5) for free in (2, 3, 9, 100)] == [1, 1, 3, 16]


def test_without_a_gpu_trials_run_on_the_cpu_and_a_number_keeps_its_meaning(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    auto = devices.trial_devices(_settings(tmp_path), {"CPU": 8}, None, None, None)
    assert auto.resources() == {"cpu": 1.0, "gpu": 0.0} and "no GPU visible" in auto.note
    assert devices.trial_devices(_settings(tmp_path, gpus_per_trial=0.5, cpus_per_trial=2), {"CPU": 8, "GPU": 2},
                                 None, None, None).resources() == {"cpu": 2, "gpu": 0.5}
    # A cluster's GPUs that this machine cannot see (nothing to measure on): a whole GPU each.
    assert devices.trial_devices(_settings(tmp_path), {"CPU": 8, "GPU": 2}, None, None, None).gpus == 1.0
    with pytest.raises(UserError, match="asks for GPUs, but Ray sees none"):
        devices.trial_devices(_settings(tmp_path, gpus_per_trial=1), {"CPU": 8}, None, None, None)
    with pytest.raises(UserError, match="--latency-device cuda needs the trials on a GPU"):
        devices.trial_devices(_settings(tmp_path, latency_device="cuda"), {"CPU": 8}, None, None, None)


@pytest.mark.parametrize("option, value, message", [
    ("--gpus-per-trial", "some", "--gpus-per-trial must be 'auto' or a number"),
    ("--gpus-per-trial", "-1", "--gpus-per-trial must be >= 0"),
    ("--latency-device", "tpu", "--latency-device: invalid choice"),
])
def test_bad_device_options_are_one_line_and_exit_2(option, value, message, capsys):
    assert search_main(["--data", "demo", "--budget", "30%", option, value]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_latency_records_the_device_name(monkeypatch):
    model = load_teacher("random:tiny")
    result = measure_latency(model, seconds=0.1, warmup=0, repeats=1, threads=1)
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if shutil.which("lscpu") else ""
    names = [line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")]
    if names:
        assert result.device_name == names[0]
    assert (result.device, result.torch_threads, result.repeats) == ("cpu", 1, 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU 16GB")
    from sslc.metrics.latency import device_name

    assert device_name("cuda") == "Fake GPU 16GB"


def test_a_latency_measurement_waits_until_no_trial_trains_on_its_device():
    async def scenario():
        gate, events = DeviceLocks(), []
        await gate.share("n/cpu", "A")  # trainer A trains
        measuring = asyncio.create_task(gate.exclusive("n/cpu", "M"))
        await asyncio.sleep(0.05)
        assert not measuring.done()  # A still trains: the measurement waits
        joining = asyncio.create_task(gate.share("n/cpu", "B"))  # trainer B would start now: it waits behind it
        other = asyncio.create_task(gate.share("n/cuda:0", "C"))  # another device is not held up
        await asyncio.sleep(0.05)
        assert other.done() and not joining.done()

        async def report_of_a():  # A reaches its next report: it lets go until the measurement is done
            await gate.pause("n/cpu", "A")
            events.append("A resumes")

        pausing = asyncio.create_task(report_of_a())
        await asyncio.wait_for(measuring, 1)
        events.append("measuring")
        await asyncio.sleep(0.05)
        assert not joining.done() and not pausing.done()
        await gate.release("n/cpu", "M")
        await asyncio.wait_for(asyncio.gather(joining, pausing), 1)
        assert events == ["measuring", "A resumes"] and set(gate.users["n/cpu"]) == {"A", "B"}
        await gate.pause("n/cpu", "A")  # nothing waits: a report passes straight through

    asyncio.run(scenario())


def test_a_trainer_whose_process_died_holds_a_measurement_up_only_until_its_lease_lapses(monkeypatch):
    monkeypatch.setattr(device_gate, "RENEW_SECONDS", 0.05)

    async def scenario():
        gate = DeviceLocks(lease_seconds=0.3)
        await gate.share("n/cpu", "dead")  # never renewed, never let go
        await gate.share("n/cpu", "alive")
        started = time.monotonic()
        measuring = asyncio.create_task(gate.exclusive("n/cpu", "M"))
        for _ in range(12):  # "alive" renews its lease and, at its report, pauses
            await asyncio.sleep(0.05)
            await gate.renew("alive")
        pausing = asyncio.create_task(gate.pause("n/cpu", "alive"))
        await asyncio.wait_for(measuring, 2)
        assert time.monotonic() - started >= 0.3 and "dead" not in gate.users["n/cpu"]
        await gate.release("n/cpu", "M")
        await asyncio.wait_for(pausing, 1)

    asyncio.run(scenario())


def _record_resources(kind: str) -> None:
    with open(os.environ[RESOURCE_LOG], "a") as log:
        log.write(json.dumps([kind, ray.get_runtime_context().get_assigned_resources()]) + "\n")


class ResourcesThenFaults(Faults):
    def __call__(self, trial_number, student):
        _record_resources("trial")
        super().__call__(trial_number, student)


def recorded_baseline(setup, config_dict, macs):
    _record_resources("baseline")
    return train_baseline(setup, config_dict, macs)


def test_on_a_gpu_trials_and_baselines_get_the_same_share_and_an_oom_trial_fails_with_that_reason(
    tmp_path, fake_cuda, monkeypatch
):
    # Ray is told of the one GPU this process "sees"; the workers' torch has none, so they train on the CPU.
    shipped_by_value()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    log = tmp_path / "resources.jsonl"
    monkeypatch.setenv(RESOURCE_LOG, str(log))
    monkeypatch.setattr(devices, "measure_trial_bytes", lambda *args, **kwargs: 3 * GiB)
    monkeypatch.setattr(runner, "train_baseline", recorded_baseline)
    # The driver's own GPU work (the plan's device list and timed steps, the target build) cannot run on a fake GPU.
    monkeypatch.setattr(plan, "devices_found", lambda: ["cuda:0 Fake GPU 16GB (16 GiB)"])
    monkeypatch.setattr(plan, "time_training_steps", lambda *args, **kwargs: 0.01)
    monkeypatch.setattr(targets_module, "build_device", lambda: torch.device("cpu"))
    # 70%: one baseline trains (the others are over budget), which is all this needs, at a fraction of the time.
    settings = _settings(tmp_path, cpus_per_trial=0.5, baselines=True, budget="70%")
    run_search(settings, before_training=ResourcesThenFaults({0: "oom"}))

    study = load_study(settings.run_dir)
    share = 0.3333  # 10 GiB free / 3 GiB a trial, 4 trials of 0.5 CPU on 2 CPUs: 3 per GPU
    assert study.user_attrs["trial_devices"]["gpu"] == share
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = [kind for kind, _ in rows]
    assert kinds.count("trial") == 2 and kinds.count("baseline") >= 1
    assert all(resources == {"CPU": 0.5, "GPU": share} for _, resources in rows)

    trials = {t.number: t for t in study.get_trials()}
    oom = trials[0]
    assert oom.state == TrialState.FAIL
    reason = oom.user_attrs["fail_reason"]
    assert reason.startswith("out of GPU memory (OutOfMemoryError on node ") and "CUDA out of memory" in reason
    assert "\n" not in reason
    assert "OutOfMemoryError" in (settings.run_dir / "trials" / "0" / "error.txt").read_text()
    done = [t for t in trials.values() if outcome_of(t) == Outcome.COMPLETE]
    assert len(done) == 1  # the search went on: the second trained trial completed
    attrs = done[0].user_attrs
    measured = attrs["latency_measurement"]
    assert measured["device"] == "cpu" and measured["torch_threads"] >= 1 and measured["repeats"] == 1
    assert measured["device_name"]
    assert attrs["train_device"].startswith("cpu (")  # the workers' torch has no CUDA
    trained = [b for b in study.user_attrs["baselines"] if b["status"] == "completed"]
    assert trained and all(b["train_device"] == attrs["train_device"] for b in trained)
    assert all(b["latency_measurement"]["device"] == "cpu" for b in trained)


def test_a_trial_measures_cuda_latency_on_its_own_gpu_and_holds_every_device_it_trains_on(monkeypatch):
    monkeypatch.setattr(device_gate, "node_name", lambda: "10.0.0.7 (abcd1234)")
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [3])  # what Ray gave this trial
    assert device_gate.measured_device("cuda") == "10.0.0.7 (abcd1234)/cuda:3"
    assert device_gate.measured_device("cpu") == "10.0.0.7 (abcd1234)/cpu"
    assert device_gate.used_devices() == ["10.0.0.7 (abcd1234)/cpu", "10.0.0.7 (abcd1234)/cuda:3"]
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    assert device_gate.used_devices() == ["10.0.0.7 (abcd1234)/cpu"]
