"""The search end to end on a tiny teacher: study states, budget, Pareto front, files, failures, resume."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from faults import Faults, shipped_by_value
from optuna.trial import TrialState

import sslc
from sslc.budget import BudgetError, parse_budget
from sslc.compress import CompressionConfig
from sslc.errors import UserError
from sslc.metrics import count_macs
from sslc.models import tiny_config
from sslc.runs.storage import load_study
from sslc.runs.study import StudyRecord
from sslc.runs.trials import Outcome, outcome_of
from sslc.search.runner import SearchSettings, run_search

FAULTS_SCRIPT = Path(__file__).with_name("faults.py")

TEACHER_MACS = count_macs(tiny_config(), seconds=10).total


def _settings(tmp_path, name, **overrides):
    base = dict(
        teacher="random:tiny", data="demo", budget="70%", trials=4, steps=4, batch_size=2, crop_seconds=1.0,
        name=name, run_dir=tmp_path / name, latency_repeats=1, baselines=False, quiet=True,
    )
    return SearchSettings(**{**base, **overrides})


def _non_dominated(points: dict[int, tuple[float, ...]]) -> set[int]:
    """Independent Pareto computation: a point is dropped when another is <= everywhere and < somewhere."""
    def dominates(a, b):
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    return {n for n, p in points.items() if not any(dominates(q, p) for m, q in points.items() if m != n)}


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search")
    settings = _settings(tmp, "e2e", trials=5, baselines=True)
    result = run_search(settings)
    return settings, result, load_study(settings.run_dir)


def test_end_to_end_trials_budget_and_pareto(finished_search):
    settings, result, study = finished_search
    trials = study.get_trials(deepcopy=False)
    budget = int(0.7 * TEACHER_MACS)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and not t.user_attrs.get("infeasible")]
    assert not result.interrupted
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    trained = [t for t in trials if not t.user_attrs.get("infeasible")]
    assert len(trained) == settings.trials
    assert complete, "some trials must complete"
    for t in trials:
        config = CompressionConfig.from_dict(t.user_attrs["config"])
        macs = count_macs(config.student_architecture(tiny_config()), seconds=10).total
        assert macs == t.user_attrs["macs"]
        # The budget as the samplers see it: a constraint value on every trial, positive exactly when over budget.
        assert t.constraints["macs"] == pytest.approx((macs - budget) / budget)
        if t.user_attrs.get("infeasible"):
            assert macs > budget  # recognised before training
            assert not (settings.run_dir / "trials" / str(t.number)).exists()
            # FAIL until some trial was trained, then COMPLETE with placeholder values; never on the front.
            assert t.state in (TrialState.FAIL, TrialState.COMPLETE)
            assert outcome_of(t) == Outcome.INFEASIBLE
        else:
            assert macs <= budget
    for t in complete:
        assert len(t.values) == 2 and t.values[1] == pytest.approx(t.user_attrs["macs"] / 1e9)
        assert t.values[0] == pytest.approx(t.user_attrs["heldout_loss"])
        assert t.user_attrs["latency_ms"] > 0 and t.user_attrs["params"] > 0
        assert set(t.user_attrs["macs_breakdown"]) >= {"cnn", "ffn"}
        assert t.user_attrs["budget_slack_macs"] == budget - t.user_attrs["macs"]
        student = sslc.load_student(settings.run_dir / "trials" / str(t.number) / "student.pt")  # the export format
        assert student.num_layers == len(t.user_attrs["config"]["layers"])
        assert student.metadata["compression"] == t.user_attrs["config"]
        assert count_macs(student.config, seconds=10).total == t.user_attrs["macs"]
        saved = json.loads((settings.run_dir / "trials" / str(t.number) / "config.json").read_text())
        assert saved == t.user_attrs["config"]
        # The files came back through Ray: the sink counted what it wrote.
        files = (settings.run_dir / "trials" / str(t.number)).iterdir()
        assert t.user_attrs["artifact_bytes"] == sum(f.stat().st_size for f in files)

    front = _non_dominated({t.number: tuple(t.values) for t in complete})
    assert {t.number for t in study.best_trials} == front
    document = json.loads((settings.run_dir / "pareto.json").read_text())
    assert document["protocol"] == study.user_attrs["protocol"] and document["objectives"] == ["heldout_loss", "gmacs"]
    rows = document["points"]
    assert {row["trial"] for row in rows} == front
    with open(settings.run_dir / "pareto.csv") as handle:
        assert {int(row["trial"]) for row in csv.DictReader(handle)} == front
    assert {t.number for t in study.best_trials} == {row["trial"] for row in result.pareto}


def test_every_candidate_is_scored_on_the_protocol_targets(finished_search):
    """Students of every depth get the same target list; the loss objective is the mean over the targets."""
    settings, _, study = finished_search
    protocol = study.user_attrs["protocol"]
    assert protocol["targets"] == [1, 2] and protocol["heldout_segments"] > 0  # the 2-layer teacher's default
    assert StudyRecord.read(study).identity()["protocol"] == protocol  # what a resumed search must keep
    complete = [t for t in study.get_trials(deepcopy=False) if outcome_of(t) == Outcome.COMPLETE]
    assert complete
    for t in complete:
        by_target = t.user_attrs["heldout_loss_by_target"]
        assert sorted(by_target) == ["1", "2"]
        assert t.values[0] == pytest.approx(sum(by_target.values()) / len(by_target), rel=1e-12)
    baselines = [b for b in study.user_attrs["baselines"] if b["heldout_loss"] is not None]
    for b in baselines:
        assert sorted(b["heldout_loss_by_target"]) == ["1", "2"]
        assert b["heldout_loss"] == pytest.approx(sum(b["heldout_loss_by_target"].values()) / 2, rel=1e-12)
    assert baselines  # (students of several depths on one target list: tests/test_trainers.py)


def test_study_records_settings_teacher_and_baselines(finished_search):
    settings, _, study = finished_search
    attrs = study.user_attrs
    assert StudyRecord.read(study).objectives == ["loss", "macs"]
    assert study.metric_names == ["heldout_loss", "gmacs"]  # the dashboard's axis titles
    assert attrs["teacher"]["macs"] == TEACHER_MACS and attrs["teacher"]["is_random"]
    assert attrs["budget"]["max_macs"] == int(0.7 * TEACHER_MACS)
    names = {b["name"] for b in attrs["baselines"]}
    assert names == {"uniform", "distilhubert-2layer", "lighthubert-small", "fithubert-like", "dphubert-like"}
    uniform = next(b for b in attrs["baselines"] if b["name"] == "uniform")
    assert uniform["macs"] <= attrs["budget"]["max_macs"] and uniform["heldout_loss"] > 0


def test_a_raising_and_a_nan_trial_fail_and_the_search_goes_on(tmp_path):
    # 100%: every config fits, so trial numbers 0..3 are exactly the trained trials.
    shipped_by_value()
    settings = _settings(tmp_path, "faults", budget="100%")
    run_search(settings, before_training=Faults({0: "raise", 1: "nan"}))
    study = load_study(settings.run_dir)
    by_number = {t.number: t for t in study.get_trials()}
    assert by_number[0].state == TrialState.FAIL
    assert "injected fault" in by_number[0].user_attrs["fail_reason"]
    # One line that names the node the trial ran on (on a cluster, where to look).
    assert f"on node {by_number[0].user_attrs['node']}: " in by_number[0].user_attrs["fail_reason"]
    assert "\n" not in by_number[0].user_attrs["fail_reason"]
    assert (settings.run_dir / "trials" / "0" / "error.txt").exists()
    assert by_number[1].state == TrialState.FAIL
    assert "non-finite" in by_number[1].user_attrs["fail_reason"]
    assert {by_number[2].state, by_number[3].state} == {TrialState.COMPLETE}
    assert {t.number for t in study.best_trials} <= {2, 3}


def test_early_stopped_trials_are_pruned_never_on_the_front(tmp_path):
    # A rule that stops every trial at its first rung: all must end PRUNED with no objective values.
    settings = _settings(tmp_path, "pruned", budget="100%", trials=3, steps=6, warm_start=False,
                         stopping_rule={"min_peers": -1, "min_dominators": 0})
    result = run_search(settings)
    study = load_study(settings.run_dir)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED] * 3
    assert all(t.values is None and t.user_attrs["stopped_at_step"] < 6 for t in trials)
    assert study.best_trials == [] and result.pareto == []
    # What each cost until stopped is kept (a benchmark comparing searches in CPU time needs it): more than
    # nothing, and within the span Optuna itself recorded from asking the trial to telling it.
    for trial in trials:
        span = (trial.datetime_complete - trial.datetime_start).total_seconds()
        assert 0 < trial.user_attrs["seconds_until_stopped"] <= span, (trial.user_attrs, span)


def test_a_resumed_search_stops_trials_against_the_trials_trained_before_it(tmp_path):
    # First run: two trials, a rule that never stops. Resumed with one more trial and a rule that stops any trial
    # with more than one peer at a rung: one trial at a time, so the new trial's only peers are the first run's.
    first = _settings(tmp_path, "peers", budget="100%", trials=2, steps=6, warm_start=False, concurrency=1,
                      stopping_rule={"min_peers": 100, "min_dominators": 0})
    run_search(first)
    run_search(replace(first, trials=3, stopping_rule={"min_peers": 1, "min_dominators": 0}))
    trials = [t for t in load_study(first.run_dir).get_trials() if outcome_of(t) != Outcome.REPEAT]
    assert [t.state for t in trials[:2]] == [TrialState.COMPLETE] * 2
    assert trials[2].state == TrialState.PRUNED and trials[2].user_attrs["stopped_at_step"] < 6


def test_early_stopping_never_stops_a_warm_start_trial(tmp_path):
    # The same rule with the warm start: its shapes train to the end (the anchors' shapes, and the CNN-cut ones
    # whose early loss is worst); the sampler's trials after them are stopped as before.
    settings = _settings(tmp_path, "warm", budget="100%", trials=3, steps=6,
                         stopping_rule={"min_peers": -1, "min_dominators": 0})
    run_search(settings)
    trials = load_study(settings.run_dir).get_trials()
    assert any("warm_start" in t.user_attrs for t in trials)
    for trial in trials:
        warm = "warm_start" in trial.user_attrs
        assert trial.state == (TrialState.COMPLETE if warm else TrialState.PRUNED), trial.user_attrs.get("warm_start")


def _counts(run_dir, storage_url: str | None = None):
    # Read like a dashboard does; creating the schema is the search's job. Another storage (a PostgreSQL
    # server shared by several tests) holds the study under the run's name (the commands pass --name).
    url = storage_url or f"sqlite:///{run_dir / 'study.db'}"
    storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    if storage_url is None:
        (summary,) = optuna.get_all_study_summaries(storage)
        name = summary.study_name
    else:
        name = run_dir.name
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    storage.engine.dispose()  # a server counts connections: polling must not leave one open per read
    return trials


def _search_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.getcwd()}


def _tiny_search_command(run_dir, trials: int, steps: int, storage_url: str | None = None) -> list[str]:
    """`sslc-search` on the tiny teacher, one trial at a time, every trial trained to the end."""
    return [
        sys.executable, "-m", "sslc.cli.search", "--teacher", "random:tiny", "--data", "demo", "--budget", "100%", "--trials",
        str(trials), "--steps", str(steps), "--batch-size", "2", "--crop-seconds", "1", "--name", run_dir.name,
        "--run-dir", str(run_dir), "--no-report", "--no-baselines", "--concurrency", "1", "--no-early-stopping",
    ] + (["--storage", storage_url] if storage_url else [])


@contextlib.contextmanager
def _search_process(command, env, stderr_path):
    """The search in its own process group, so Ray processes orphaned by a kill are cleaned up at the end."""
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def _wait_for_trials(process, run_dir, stderr_path, ready, what: str, timeout: float, storage_url=None):
    """Poll the study until `ready(trials)`; fail at once if the search exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(1)
        if process.poll() is not None:
            pytest.fail(f"the search exited ({process.returncode}) before {what}: {stderr_path.read_text()[-2000:]}")
        try:
            trials = _counts(run_dir, storage_url)
        except Exception:  # no study yet
            continue
        if ready(trials):
            return
    pytest.fail(f"the search did not get to {what} in time")


def _two_done_one_training(trials, hanging: int = 3) -> bool:
    # Kill while the hanging trial trains (its config chosen), so there is a config to run again. Only that one:
    # another trial seen training may finish between this poll and the kill, leaving nothing interrupted.
    training = [t for t in trials if t.state == TrialState.RUNNING and "config" in t.user_attrs and t.number == hanging]
    return sum(outcome_of(t) == Outcome.COMPLETE for t in trials) >= 2 and bool(training)


def test_resume_after_sigkill_keeps_completed_trials(tmp_path):
    check_resume_after_sigkill(tmp_path / "resume", tmp_path / "stderr")


def check_resume_after_sigkill(run_dir, stderr_path, storage_url: str | None = None):
    """SIGKILL a search mid-trial, rerun it: no COMPLETE trial lost or re-run, none left RUNNING or WAITING, the
    interrupted config queued again once. `storage_url`: the study's storage (default: the run's study.db)."""
    command, env = _tiny_search_command(run_dir, trials=6, steps=40, storage_url=storage_url), _search_env()
    # Trial 3 trains until the kill: tiny trials take a second, too short to catch one running by polling.
    with_fault = [sys.executable, str(FAULTS_SCRIPT), "hang:3", "--", *command[3:]]  # the same search, via the seam
    with _search_process(with_fault, env, stderr_path) as process:
        _wait_for_trials(process, run_dir, stderr_path, _two_done_one_training, "two trials done", timeout=240,
                         storage_url=storage_url)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        before = {t.number: t.values for t in _counts(run_dir, storage_url) if t.state == TrialState.COMPLETE}
        assert len(before) >= 2

        finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    after = _counts(run_dir, storage_url)
    assert not [t for t in after if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    kept = {t.number: t.values for t in after if t.state == TrialState.COMPLETE}
    assert all(kept[n] == values for n, values in before.items())  # nothing lost, nothing re-run
    counted = [t for t in after if not t.user_attrs.get("interrupted") and not t.user_attrs.get("infeasible")]
    assert len(counted) == 6
    interrupted = [t for t in after if t.user_attrs.get("interrupted")]
    assert interrupted and all(t.state == TrialState.FAIL for t in interrupted)
    retried = {t.user_attrs.get("retry_of") for t in after} - {None}
    assert retried == {t.number for t in interrupted if t.params}  # a trial killed before its config has none
    # The resumed sampler does not replay the first run's proposals (which would come back as repeats).
    assert not [t.number for t in after if t.user_attrs.get("repeat_of") is not None]


@pytest.mark.parametrize(
    "text, macs, share",
    [
        ("30GMACs", 30e9, None), ("30gmacs", 30e9, None), ("500MMACs", 500e6, None), ("3e10", 3e10, None),
        ("2.5G", 2.5e9, None), ("1.5 TMAC", 1.5e12, None), ("40%", None, 0.4), ("100%", None, 1.0),
    ],
)
def test_budget_parsing(text, macs, share):
    spec = parse_budget(text)
    assert spec.macs == pytest.approx(macs) if macs else spec.macs is None
    assert spec.share == pytest.approx(share) if share else spec.share is None


@pytest.mark.parametrize("text", ["", "abc", "30GFLOPs", "0", "0GMACs", "-5GMACs", "0%", "150%", "30 G M", "1e"])
def test_malformed_budgets_are_rejected(text):
    with pytest.raises(BudgetError):
        parse_budget(text)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "sslc.cli.search", *args], capture_output=True, text=True, timeout=120, env=_search_env()
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget", "lots"], "not understood"),
        (["--budget", "-3GMACs"], "budget"),
        (["--budget", "1MMACs"], "smallest config"),
        (["--budget", "50%", "--teacher", "random:nope"], "random:nope"),
        (["--budget", "50%", "--data", "/no/such/dir"], "/no/such/dir"),
        (["--budget", "50%", "--space", "/no/such/space.yaml"], "space"),
        (["--budget", "50%", "--ray-address", "127.0.0.1:1"], "cannot reach the Ray cluster"),
        (["--budget", "50%", "--targets", "4,x"], "--targets"),
        (["--budget", "50%", "--targets", "3"], "out of range"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = _cli("--teacher", "random:tiny", "--data", "demo", "--run-dir", str(tmp_path / "bad"), *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_ctrl_c_exits_130_and_leaves_no_trial_running(tmp_path):
    run_dir, stderr_path = tmp_path / "ctrlc", tmp_path / "stderr"
    with _search_process(_tiny_search_command(run_dir, trials=4, steps=2000), _search_env(), stderr_path) as process:
        _wait_for_trials(process, run_dir, stderr_path, lambda trials: TrialState.RUNNING in [t.state for t in trials],
                         "a trial started", timeout=180)
        time.sleep(3)  # let the trial get into training
        os.kill(process.pid, signal.SIGINT)
        process.wait(timeout=120)
    assert process.returncode == 130, stderr_path.read_text()[-2000:]
    trials = _counts(run_dir)
    assert TrialState.RUNNING not in [t.state for t in trials]
    cut = [t for t in trials if t.user_attrs.get("interrupted")]
    assert cut and all(t.state == TrialState.FAIL and "interrupted" in t.user_attrs["fail_reason"] for t in cut)
    assert not [t for t in trials if t.state == TrialState.PRUNED]  # Ctrl-C is not early stopping


def test_reusing_a_name_with_other_settings_is_refused_and_changes_nothing(finished_search):
    settings, _, study = finished_search
    before = [(t.number, t.state, t.values) for t in study.get_trials()]
    with pytest.raises(UserError, match="budget_macs"):
        run_search(replace(settings, budget="60%"))
    after = [(t.number, t.state, t.values) for t in load_study(settings.run_dir).get_trials()]
    assert after == before


def test_resuming_with_other_targets_is_refused_with_exit_2(finished_search):
    settings, _, study = finished_search
    before = [(t.number, t.state, t.values) for t in study.get_trials()]
    result = _cli(
        "--teacher", "random:tiny", "--data", "demo", "--budget", "70%", "--trials", "5", "--steps", "4",
        "--batch-size", "2", "--crop-seconds", "1", "--latency-repeats", "1", "--no-baselines",
        "--name", "e2e", "--run-dir", str(settings.run_dir), "--targets", "2",
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in result.stderr and len(errors) == 1, result.stderr
    assert "protocol" in errors[0] and "[1, 2]" in errors[0] and "[2]" in errors[0], errors
    assert [(t.number, t.state, t.values) for t in load_study(settings.run_dir).get_trials()] == before


def test_a_study_from_before_the_protocol_is_refused(tmp_path):
    from sslc.runs.storage import make_storage
    from sslc.search.storage import open_study

    storage = make_storage(f"sqlite:///{tmp_path / 'old.db'}")
    old = optuna.create_study(storage=storage, study_name="old", directions=["minimize", "minimize"])
    old.set_user_attr("identity", {"teacher": "random:tiny", "trainer": {}})  # what older sslc recorded
    now = StudyRecord(settings={"teacher": "random:tiny"}, objectives=["loss", "macs"], protocol={})
    with pytest.raises(UserError, match="older sslc"):
        open_study(storage, "old", ["minimize", "minimize"], None, now)


def test_pareto_files_name_the_studys_objectives(tmp_path):
    from sslc.search.pareto import write_pareto

    study = optuna.create_study(directions=["minimize", "minimize"])
    study.set_metric_names(["heldout_loss", "latency_ms"])  # as a search with objectives loss,latency does
    study.add_trial(optuna.trial.create_trial(values=[1.5, 20.0], user_attrs={"macs": 10, "params": 5}))
    (row,) = write_pareto(study, tmp_path)
    assert row["objectives"] == {"heldout_loss": 1.5, "latency_ms": 20.0}  # each name says its unit
    document = json.loads((tmp_path / "pareto.json").read_text())
    assert document["points"][0]["objectives"] == row["objectives"]
    assert document["objectives"] == ["heldout_loss", "latency_ms"]


def test_a_budget_in_the_superb_convention_bounds_the_superb_macs(tmp_path):
    """--macs-convention superb: the budget (a share of the teacher's SUPERB-convention MACs) is enforced on each
    config's MACs summed over SUPERB's 32 utterances; both conventions reach the trials and the Pareto files."""
    from sslc.metrics import count_macs_superb

    settings = _settings(tmp_path, "superb", budget="60%", macs_convention="superb", trials=3)
    result = run_search(settings)
    study = load_study(settings.run_dir)
    budget = study.user_attrs["budget"]
    assert budget["convention"] == "superb" and budget["max_macs"] == int(0.6 * count_macs_superb(tiny_config()))
    for t in study.get_trials():
        config = CompressionConfig.from_dict(t.user_attrs["config"])
        superb = count_macs_superb(config.student_architecture(tiny_config()))
        assert t.user_attrs["macs_superb"] == superb
        assert t.user_attrs["budget_slack_macs"] == budget["max_macs"] - superb
        assert (superb > budget["max_macs"]) == bool(t.user_attrs.get("infeasible"))
    with open(settings.run_dir / "pareto.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["trial"]) for r in rows] == [p["trial"] for p in result.pareto] and rows
    by_number = {t.number: t for t in study.get_trials()}
    for row in rows:
        assert float(row["gmacs_superb"]) == pytest.approx(by_number[int(row["trial"])].user_attrs["macs_superb"] / 1e9)
