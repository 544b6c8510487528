"""A two-node Ray cluster on this machine where the trial node cannot see the run directory: the search still
completes, every trial's files reach the driver's run directory through Ray, and the cluster uses Ray's token
authentication (a driver without the token gets one line). Needs root (a mount namespace) and `unshare`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from optuna.trial import TrialState

import sslc
from sslc.runs.storage import load_study
from tests.test_dashboard_cli import free_port
from tests.test_search import _non_dominated

RAY = Path(sys.executable).with_name("ray")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare") or not RAY.exists(),
    reason="needs root and unshare (a mount namespace hides the run directory from the second node)",
)


def _ray_start(args: list[str], env: dict, log: Path, hide: Path | None = None) -> subprocess.Popen:
    """`ray start` in a process group of its own (the node's daemons stay in it: stopped by that id). With
    `hide`, the node runs in a mount namespace where `hide` is an empty tmpfs."""
    command = [str(RAY), "start", *args]
    if hide is not None:
        command = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                   'mount -t tmpfs sslc-hidden "$0" && exec "$@"', str(hide), *command]
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    if process.wait(timeout=180) != 0:
        raise AssertionError(f"ray start failed: {log.read_text()[-2000:]}")
    return process


def _stop(process: subprocess.Popen) -> None:
    for sig, pause in ((signal.SIGTERM, 5), (signal.SIGKILL, 0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        time.sleep(pause)


def _node_ports() -> list[str]:
    # Fixed defaults (the dashboard agent's 52365, ...) would clash between two nodes on one machine.
    return [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]


@contextlib.contextmanager
def _two_nodes(tmp_path: Path, head_cpus: int = 0, worker_cpus: int = 2):
    """(address, env with the token, runs folder the second node cannot see): a head (the driver's node, which
    sees `runs`) and a second node in a mount namespace where `runs` is an empty tmpfs."""
    runs = tmp_path / "runs"
    runs.mkdir()
    home = tmp_path / "home"  # no ~/.ray/auth_token of this machine's user leaks in
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": os.getcwd(), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    port, started = free_port(), []
    temp = Path("/tmp") / f"sslc-ray-{uuid.uuid4().hex[:6]}"  # short: Ray's socket paths have a length limit
    try:
        # Each node on its own loopback address: with one address for both, the driver attaches to either
        # raylet, and Ray's scheduler, which prefers the driver's node, then sometimes sends every trial to the
        # second node (seen once in CI).
        started.append(_ray_start(
            ["--head", f"--port={port}", f"--num-cpus={head_cpus}", "--include-dashboard=false",
             "--node-ip-address=127.0.0.1", f"--temp-dir={temp}-h", *_node_ports()], env, tmp_path / "head.log"))
        started.append(_ray_start(
            [f"--address=127.0.0.1:{port}", f"--num-cpus={worker_cpus}", "--node-ip-address=127.0.0.2",
             f"--temp-dir={temp}-w", *_node_ports()],
            env, tmp_path / "worker.log", hide=runs))
        yield f"127.0.0.1:{port}", env, runs
    finally:
        for process in reversed(started):
            _stop(process)
        for suffix in ("-h", "-w"):
            shutil.rmtree(f"{temp}{suffix}", ignore_errors=True)


@pytest.fixture
def cluster(tmp_path):
    # The head runs no trial (0 CPUs): the trials can only run on the second node, which cannot see `runs`.
    with _two_nodes(tmp_path) as nodes:
        yield nodes


def test_two_node_search_brings_every_student_back(cluster, tmp_path):
    address, env, runs = cluster
    run_dir = runs / "run"
    command = [
        sys.executable, "-m", "sslc.cli.search", "--ray-address", address, "--teacher", "random:tiny", "--data", "demo", "--budget",
        "100%", "--trials", "3", "--steps", "4", "--batch-size", "2", "--crop-seconds", "1", "--name", "two-node",
        "--run-dir", str(run_dir), "--no-report", "--no-baselines", "--no-early-stopping",
    ]
    # A driver without the cluster's token is refused with one line saying what to set.
    refused = subprocess.run(command, env={k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"},
                             capture_output=True, text=True, timeout=300)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and lines and "RAY_AUTH_TOKEN" in lines[-1], refused.stderr[-2000:]
    assert len([line for line in lines if line.startswith("error:")]) == 1

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]

    study = load_study(run_dir)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, [t.user_attrs.get("fail_reason") for t in trials]
    cache_id = (run_dir / "cache" / "run-id").read_text().strip()
    node_cache = Path("/tmp") / "sslc-cache" / cache_id
    try:
        # The driver built the teacher targets in the run's cache before the trials; the workers could not see it,
        # so they built their own in a node-local one.
        assert list((node_cache / "targets").iterdir()) and list((run_dir / "cache" / "targets").iterdir())
    finally:
        shutil.rmtree(node_cache, ignore_errors=True)
    assert len({t.user_attrs["node"] for t in trials}) == 1  # all on the second node (the head has no CPU)
    for t in trials:
        trial_dir = run_dir / "trials" / str(t.number)
        student = sslc.load_student(trial_dir / "student.pt")
        assert student is not None
        assert json.loads((trial_dir / "config.json").read_text()) == t.user_attrs["config"]
        assert t.user_attrs["artifact_bytes"] == sum(p.stat().st_size for p in trial_dir.iterdir())
    front = _non_dominated({t.number: tuple(t.values) for t in trials})
    pareto = json.loads((run_dir / "pareto.json").read_text())
    assert {p["trial"] for p in pareto["points"]} == front and len(pareto["points"]) == len(front)


def _long_corpus(root: Path, files: int, seconds: float) -> None:
    """Noise files, 8 kHz (read as 16 kHz): `files` x `seconds` of audio in all."""
    import numpy as np
    import soundfile as sf

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(files):
        sf.write(str(root / f"utt{index:03d}.wav"), 0.1 * rng.standard_normal(int(seconds * 8000)), 8000,
                 subtype="PCM_16")


# Holds one CPU of the node argv[2] (head or second) until its stdin closes, then gives it back and waits until the
# cluster counts it free again.
_HOLD_A_CPU = """
import sys, time, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init(address=sys.argv[1], logging_level="ERROR")
# Ray marks its head node with this resource (the head may report another address than --node-ip-address).
nodes = {"head" if "node:__internal_head__" in n["Resources"] else "second": n["NodeID"]
         for n in ray.nodes() if n["Alive"]}
node = nodes[sys.argv[2]]
total = ray.cluster_resources()["CPU"]

@ray.remote(num_cpus=1)
class Holder:
    def ready(self):
        return True

holder = Holder.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
ray.get(holder.ready.remote())
print("holding", flush=True)
sys.stdin.read()
ray.kill(holder)
while ray.available_resources().get("CPU", 0) < total:
    time.sleep(0.2)
"""


@contextlib.contextmanager
def _cpu_held_on(node: str, address: str, env: dict):
    """Ray places each trial on whichever node has a CPU free; holding the only CPU of one node sends every trial
    to the other (without it, Ray's choice decides which node gets which trial)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_A_CPU, address, node], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        if holder.stdout.readline().strip() != "holding":
            raise AssertionError(f"could not hold a CPU on the {node} node: {holder.communicate(timeout=60)[1][-3000:]}")
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=120)


def test_a_node_that_cannot_read_the_audio_fails_its_trials_in_one_line_and_the_search_goes_on(tmp_path):
    """A corpus too large to travel with the trials (over SHIPPED_AUDIO_BYTES of crops) must be at the same path
    on every node. Here it is only on the head: the head's trials complete, the second node's trials fail with one
    line naming that node and the file it could not read, and the search (resumed, the study goes on) finishes."""
    from sslc.search.inputs import SHIPPED_AUDIO_BYTES

    crop_seconds = 30.0
    files = int(SHIPPED_AUDIO_BYTES / (4 * 16000 * crop_seconds)) + 2  # just over the limit: not shipped
    with _two_nodes(tmp_path, head_cpus=1, worker_cpus=1) as (address, env, runs):
        corpus = runs / "corpus"  # in the folder the second node sees as an empty tmpfs
        _long_corpus(corpus, files, crop_seconds)
        run_dir = runs / "run"
        # Two trials with the second node's CPU held (they run on the head), then two more with the head's held.
        for busy_node, total in (("second", 2), ("head", 4)):
            with _cpu_held_on(busy_node, address, env):
                finished = subprocess.run([
                    sys.executable, "-m", "sslc.cli.search", "--ray-address", address, "--teacher", "random:tiny",
                    # Trials read steps x batch crops: 32 x 2 take every training file, so the crops exceed the limit.
                    "--data", str(corpus), "--budget", "100%", "--trials", str(total), "--steps", "32",
                    "--batch-size", "2", "--crop-seconds", str(crop_seconds), "--concurrency", "2",
                    "--latency-repeats", "1", "--name", "unseen", "--run-dir", str(run_dir), "--no-report",
                    "--no-baselines", "--no-early-stopping",
                ], env=env, capture_output=True, text=True, timeout=600)
            assert finished.returncode == 0, finished.stderr[-3000:]
        trials = load_study(run_dir).get_trials()
        assert len(trials) == 4
        cache_id = (run_dir / "cache" / "run-id").read_text().strip()
    shutil.rmtree(Path("/tmp") / "sslc-cache" / cache_id, ignore_errors=True)  # the second node's own cache

    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.FAIL}
    failed = [t for t in trials if t.state == TrialState.FAIL]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert [t.number for t in complete] == [0, 1], [(t.state, t.user_attrs.get("node")) for t in trials]
    assert [t.number for t in failed] == [2, 3], [(t.state, t.user_attrs.get("node")) for t in trials]
    # The nodes differ in their address and Ray node id: the failures are the second node's only.
    assert not {t.user_attrs["node"] for t in failed} & {t.user_attrs["node"] for t in complete}
    for t in failed:
        reason = t.user_attrs["fail_reason"]
        assert "\n" not in reason
        assert reason.startswith(f"AudioReadError on node {t.user_attrs['node']}: {corpus}/"), reason
        assert "cannot open (No such file or directory)" in reason
        # The traceback came back through Ray with the trial's other files.
        assert "AudioReadError" in (run_dir / "trials" / str(t.number) / "error.txt").read_text()
    for t in complete:
        assert sslc.load_student(run_dir / "trials" / str(t.number) / "student.pt") is not None
