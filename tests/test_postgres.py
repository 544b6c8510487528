"""The study in a real PostgreSQL server: a search, SIGKILL + resume, report and dashboard, all through
`--storage postgresql://...`. The server tests need `--postgres-url` (`.ci/run` starts a throwaway server and
passes it); without it they skip. A missing driver is a one-line error on any machine."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

from optuna.trial import TrialState

from sslc.cli.search import main as search_main
from sslc.runs.storage import load_study
from sslc.runs.student_file import load_student
from tests.test_dashboard_cli import fetch, free_port, wait_for_studies
from tests.test_search import (
    _counts,
    _search_env,
    _tiny_search_command,
    check_resume_after_sigkill,
)


def _unique(name: str) -> str:
    # One database serves every test (and reruns against the same server): study names must not collide.
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_search_report_and_dashboard_on_postgres(postgres_url, tmp_path):
    run_dir = tmp_path / _unique("pg-search")
    command = _tiny_search_command(run_dir, trials=3, steps=4, storage_url=postgres_url)
    finished = subprocess.run(command, env=_search_env(), capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert not (run_dir / "study.db").exists()  # the study went to the server, not to a file
    assert (run_dir / "study.txt").read_text().splitlines() == [postgres_url, run_dir.name]

    trials = _counts(run_dir, postgres_url)
    assert len(trials) == 3 and not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3  # --budget 100%, no early stopping: every trial trains to the end
    study = load_study(run_dir)  # later commands find the server's study through study.txt
    assert study.study_name == run_dir.name and len(study.trials) == 3
    pareto = json.loads((run_dir / "pareto.json").read_text())
    assert {p["trial"] for p in pareto["points"]} == {t.number for t in study.best_trials}
    for t in complete:
        load_student(run_dir / "trials" / str(t.number) / "student.pt")

    report = subprocess.run([sys.executable, "-m", "sslc.cli.report", str(run_dir)], env=_search_env(),
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr[-2000:]
    assert run_dir.name in (run_dir / "report.html").read_text()

    port = free_port()
    dashboard = subprocess.Popen([sys.executable, "-m", "sslc.cli.dashboard", str(run_dir), "--port", str(port)],
                                 env=_search_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        studies = wait_for_studies(dashboard, port)
        assert studies is not None, "the dashboard never answered"
        (ours,) = [s for s in studies if s["study_name"] == run_dir.name]
        status, body = fetch(f"http://127.0.0.1:{port}/api/studies/{ours['study_id']}")
        assert status == 200 and len(json.loads(body)["trials"]) == 3
    finally:
        dashboard.kill()
        dashboard.wait()


def test_resume_after_sigkill_on_postgres(postgres_url, tmp_path):
    check_resume_after_sigkill(tmp_path / _unique("pg-resume"), tmp_path / "stderr", postgres_url)


def test_missing_driver_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    # psycopg absent from this process (None in sys.modules makes `import psycopg` raise ImportError).
    monkeypatch.setitem(sys.modules, "psycopg", None)
    argv = ["--budget", "100%", "--teacher", "random:tiny", "--data", "demo", "--run-dir", str(tmp_path / "run"), "--storage",
            "postgresql://sslc:secret@127.0.0.1:9/sslc"]
    assert search_main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'sslc[postgres]'" in lines[0] and "secret" not in lines[0], lines
    assert not (tmp_path / "run").exists()  # refused before anything was set up
