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


@pytest.fixture
def cluster(tmp_path):
    """(address, env with the token, runs folder the second node cannot see, cache root of this test)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    home = tmp_path / "home"  # no ~/.ray/auth_token of this machine's user leaks in
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": os.getcwd(), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    port, started = free_port(), []
    temp = Path("/tmp") / f"sslc-ray-{uuid.uuid4().hex[:6]}"  # short: Ray's socket paths have a length limit
    try:
        # The head runs no trial (0 CPUs): the trials can only run on the second node, which cannot see `runs`.
        started.append(_ray_start(
            ["--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false", f"--temp-dir={temp}-h",
             *_node_ports()], env, tmp_path / "head.log"))
        started.append(_ray_start(
            [f"--address=127.0.0.1:{port}", "--num-cpus=2", f"--temp-dir={temp}-w", *_node_ports()], env,
            tmp_path / "worker.log", hide=runs))
        yield f"127.0.0.1:{port}", env, runs
    finally:
        for process in reversed(started):
            _stop(process)
        for suffix in ("-h", "-w"):
            shutil.rmtree(f"{temp}{suffix}", ignore_errors=True)


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
        # The workers could not see the run's cache: they built the teacher targets in a node-local one.
        assert list((node_cache / "targets").iterdir()) and not (run_dir / "cache" / "targets").exists()
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
