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


class Dashboard:
    """sslc-dashboard serving `target` in a child process, on a free port."""

    def __init__(self, target):
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sslc.cli.dashboard", str(target), "--port", str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def __enter__(self):
        studies = wait_for_studies(self.process, self.port)
        assert studies is not None, "the dashboard never answered"
        (self.summary,) = studies
        return self

    def get(self, path: str):
        body = fetch(f"http://127.0.0.1:{self.port}{path}")[1]
        return json.loads(body) if path.startswith("/api/") else body.decode()

    def detail(self) -> dict:
        return self.get(f"/api/studies/{self.summary['study_id']}")

    def __exit__(self, *exc):
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def test_the_dashboard_names_a_searchs_objectives(copy_run):
    """A real search's study, served: optuna-dashboard titles the objectives with the study's metric names (the
    unit-named objectives of pareto.json), not "Objective 0 / Objective 1"; each trial's constraint values are
    those Optuna reads for it; and once the report is written, its front figure, axes titled, is on the study's
    page."""
    from sslc.dashboards import write_report

    run_dir = copy_run("dashboard")
    write_report(run_dir)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{run_dir / 'study.db'}")
    with Dashboard(run_dir) as dashboard:
        detail = dashboard.detail()
        header = dashboard.get(f"/csv/{dashboard.summary['study_id']}").splitlines()[0]
    pareto = json.loads((run_dir / "pareto.json").read_text())
    assert detail["objective_names"] == pareto["objectives"] == ["heldout_loss", "gmacs"]
    assert header.startswith("Number,State,heldout_loss,gmacs,")
    by_number = {t.number: t for t in study.trials}
    served = {t["number"]: t["constraints"] for t in detail["trials"]}
    assert served == {n: list(t.constraints.values()) for n, t in by_number.items()}
    assert any(served.values())  # the search gave its trials constraint values (the list was [] for all)
    infeasible = [n for n, t in by_number.items() if t.user_attrs.get("infeasible")]
    assert infeasible and all(served[n][0] > 0 for n in infeasible)  # the tiny run's 40% budget has some
    (figure,) = [json.loads(g["graph_object"]) for g in detail["plotly_graph_objects"] if g["id"] == "sslc-pareto-front"]
    layout = figure["layout"]
    assert layout["yaxis"]["title"]["text"].startswith("held-out loss")
    assert any("GMACs" in (axis.get("title") or {}).get("text", "") for key, axis in layout.items()
               if key.startswith("xaxis"))


def test_the_dashboard_shows_feasibility_of_named_constraints(tmp_path):
    """Optuna 5 stores `Trial.set_constraint("macs", v)` as the system attr `constraints:macs`; optuna-dashboard
    0.21 reads only the list `constraints`. Served by sslc-dashboard, the API carries the values (in the order
    Optuna reads them), so the dashboard splits feasible from infeasible trials; the study keeps one form."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="constrained", directions=["minimize", "minimize"])
    for number, (macs, params) in enumerate([(-0.5, -0.1), (0.25, -0.2), (-0.1, 0.75)]):
        trial = study.ask({"depth": optuna.distributions.IntDistribution(1, 3)})
        trial.set_constraint("macs", macs)
        trial.set_constraint("params", params)
        study.tell(trial, [1.0 - 0.1 * number, 0.01 * (number + 1)])
    plain = study.ask()  # a trial with no constraint values stays without them
    study.tell(plain, [2.0, 2.0])
    with Dashboard(url) as dashboard:
        served = {t["number"]: t["constraints"] for t in dashboard.detail()["trials"]}
    assert served == {0: [-0.5, -0.1], 1: [0.25, -0.2], 2: [-0.1, 0.75], 3: []}
    stored = optuna.load_study(study_name="constrained", storage=url).trials
    assert all("constraints" not in t.system_attrs for t in stored)  # nothing written: the samplers see each once
    assert [t.constraints for t in stored[:2]] == [{"macs": -0.5, "params": -0.1}, {"macs": 0.25, "params": -0.2}]
