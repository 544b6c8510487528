"""sslc-dashboard: serves optuna-dashboard for a run directory or storage URL; bad targets are one-line errors."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest

from sslc.cli.dashboard import main as dashboard_main


@pytest.fixture
def study_dir(tmp_path):
    """A run directory holding a small two-objective study, as the search leaves it (study.db + study.txt)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    url = f"sqlite:///{run_dir / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="tiny-dash", directions=["minimize", "minimize"])
    for i in range(3):
        study.add_trial(optuna.trial.create_trial(values=[1.0 - 0.1 * i, 0.01 * (i + 1)], params={"depth": i + 1},
                                                  distributions={"depth": optuna.distributions.IntDistribution(1, 3)}))
    (run_dir / "study.txt").write_text(f"{url}\ntiny-dash\n")
    return run_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_studies(process: subprocess.Popen, port: int, timeout: float = 60) -> list[dict] | None:
    """The dashboard's study summaries once it answers; None if it exits or does not answer within `timeout`."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            return json.loads(fetch(f"http://127.0.0.1:{port}/api/studies")[1])["study_summaries"]
        except OSError:
            time.sleep(0.2)
    return None


def fetch(url: str) -> tuple[int, bytes]:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a configured proxy
    with direct.open(url, timeout=5) as response:
        return response.status, response.read()


@pytest.mark.parametrize("target", ["run_dir", "url"])
def test_serves_the_study_and_stops_on_ctrl_c(study_dir, target):
    port = free_port()
    argument = str(study_dir) if target == "run_dir" else f"sqlite:///{study_dir / 'study.db'}"
    process = subprocess.Popen(
        [sys.executable, "-m", "sslc.cli.dashboard", argument, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        studies = wait_for_studies(process, port)
        assert studies is not None, "the dashboard never answered"
        assert [s["study_name"] for s in studies] == ["tiny-dash"]
        assert studies[0]["directions"] == ["minimize", "minimize"]
        status, page = fetch(f"http://127.0.0.1:{port}/dashboard")
        assert status == 200 and b"<html" in page.lower()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert f"http://127.0.0.1:{port}/dashboard/" in out
    assert "dashboard stopped" in err and "Traceback" not in err


def test_bad_targets_are_one_line_errors(study_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        cases = [
            ([str(tmp_path / "missing")], "does not exist"),
            ([str(tmp_path / "empty")], "holds no study"),
            ([f"sqlite:///{tmp_path / 'nothing.db'}"], "does not exist"),
            ([str(study_dir), "--port", "0"], "--port must be"),
            ([str(study_dir), "--port", str(busy.getsockname()[1])], "cannot serve on"),
        ]
        for argv, message in cases:
            assert dashboard_main(argv) == 2, argv
            lines = capsys.readouterr().err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (argv, lines)
    finally:
        busy.close()
    assert not (tmp_path / "nothing.db").exists()  # a mistyped URL must not create an empty database


def test_the_dashboard_names_a_searchs_objectives(tiny_run):
    """A real search's study, served: optuna-dashboard titles the objectives with the study's metric names (the
    unit-named objectives of pareto.json), not "Objective 0 / Objective 1"."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "sslc.cli.dashboard", str(tiny_run), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        studies = wait_for_studies(process, port)
        assert studies is not None, "the dashboard never answered"
        (summary,) = studies
        detail = json.loads(fetch(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}")[1])
        pareto = json.loads((tiny_run / "pareto.json").read_text())
        assert detail["objective_names"] == pareto["objectives"] == ["heldout_loss", "gmacs"]
        header = fetch(f"http://127.0.0.1:{port}/csv/{summary['study_id']}")[1].decode().splitlines()[0]
        assert header.startswith("Number,State,heldout_loss,gmacs,")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
