"""Multi-fidelity search (--fidelities): the rung schedule, promotion by non-dominated rank, a promoted trial that
really continues, what the study records, the front at the top fidelity, bad input and a resume mid-promotion."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from faults import Faults, shipped_by_value
from optuna.trial import TrialState
from test_search import (
    FAULTS_SCRIPT,
    _search_env,
    _search_process,
    _settings,
    _tiny_search_command,
    _wait_for_trials,
)
from test_trainers import CROP, data, small_student, teacher, trial_config  # noqa: F401 (fixtures)

from sslc.cli.search import main as search_main
from sslc.runs.storage import load_study
from sslc.runs.study import StudyRecord
from sslc.runs.trials import Outcome, outcome_of
from sslc.search.runner import run_search
from sslc.search.scheduler import ParetoHalving
from sslc.trainers import TeacherTargets, run_short_trial
from sslc.trainers.distill import _State, _TrainingLoop
from sslc.trainers.schedule import rung_schedule, warmup_decay

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- the schedule and the rule ----------------------------------------------------------------------------------
def test_the_schedule_restarts_at_each_rung_and_its_first_stretch_is_the_single_fidelity_one():
    steps = 20
    single = warmup_decay(steps, 0.1, "cosine")
    multi = rung_schedule([steps, 3 * steps, 9 * steps], 0.1, "cosine")
    assert [multi(i) for i in range(steps)] == [single(i) for i in range(steps)]
    second = warmup_decay(2 * steps, 0.1, "cosine")  # rung 1 -> 3: its own warm-up and decay over 40 steps
    assert [multi(steps + i) for i in range(2 * steps)] == [second(i) for i in range(2 * steps)]
    third = warmup_decay(6 * steps, 0.1, "cosine")
    assert [multi(3 * steps + i) for i in range(6 * steps)] == [third(i) for i in range(6 * steps)]
    assert multi(steps) == pytest.approx(1 / 4)  # a warm restart: the first step of a 4-step warm-up


def test_promotion_follows_a_hand_computed_crowded_order():
    """(loss, MACs) arriving at rung 1 in this order; eta 3: promoted when among the top ceil(n/3) of the n trials
    at the rung so far (itself included) by non-dominated rank, then crowding distance, then loss. Worked out by
    hand."""
    arrivals = [
        ((0.50, 10), True),   # n=1: alone
        ((0.60, 12), False),  # n=2: top 1; dominated by the first (rank 2)
        ((0.30, 20), True),   # n=3: top 1; rank 1 beside (0.50,10), both a front's end: the lower loss first
        ((0.40, 5), True),    # n=4: top 2; it and (0.30,20) are the front (it dominates the first two)
        ((0.45, 15), False),  # n=5: top 2; dominated by (0.40,5); ranks: (0.40,5)=1, (0.30,20)=1, (0.50,10)=2, ..
        ((0.20, 30), True),   # n=6: top 2; the front (0.40,5) (0.30,20) (0.20,30): its two ends, lower loss first
        ((0.35, 25), False),  # n=7: top 3; dominated by (0.30,20): rank 2 behind the front's 3
        # n=8: top 3; non-dominated, but the front now has 4: its ends, then the middle points by crowding
        # distance (loss span 0.2, MACs span 25): (0.30,20): 0.15/0.2 + 23/25 = 1.67, (0.25,28): 0.1/0.2 +
        # 10/25 = 0.9; rank alone would have promoted it (no trial has a better rank).
        ((0.25, 28), False),
    ]
    rule = ParetoHalving(eta=3)
    for (loss, macs), promoted in arrivals:
        assert rule.promote(1, loss, macs) is promoted, (loss, macs)
    # The fourth arrival made the first one dominated: at n=5 the ranks are, by hand,
    # (0.40,5)=1 (0.30,20)=1 | (0.50,10)=2 (0.45,15)=2 | (0.60,12)=3.
    from sslc.runs.trials import non_dominated_ranks

    assert non_dominated_ranks([p for p, _ in arrivals[:5]]) == [2, 3, 1, 1, 2]
    # A resumed search decides against the rungs the study recorded: the same history, the same decisions.
    resumed = ParetoHalving(eta=3, history=[(1, loss, macs) for (loss, macs), _ in arrivals[:6]])
    assert resumed.promote(1, 0.35, 25) is False
    assert resumed.promote(3, 0.35, 25) is True  # another rung: its own peers (none yet)


# ---- the trainer: a promoted trial continues --------------------------------------------------------------------
def test_a_promoted_trial_continues_from_its_state(tmp_path, teacher, data):  # noqa: F811
    """Rung 1 is exactly a single-fidelity trial of `steps`; training on to rung 3 after scoring is the same
    training as one uninterrupted run of the same schedule (weights, heads, optimizer, data position kept)."""
    train, heldout = data
    targets = TeacherTargets(teacher, tmp_path / "cache", crop_seconds=CROP)
    config = trial_config(steps=2, log_every=1)
    single = run_short_trial(small_student(), targets, train, heldout, config, kept_layers=[1])

    promoted_student, seen = small_student(), []
    promoted = run_short_trial(promoted_student, targets, train, heldout, config, kept_layers=[1], rungs=[2, 6],
                               on_rung=lambda result: seen.append(result.heldout_loss) or True)
    assert seen == [single.heldout_loss]  # rung 1: the same score as the single-fidelity trial, bit for bit
    assert promoted.steps_done == 6 and [s for s, _, _ in promoted.rung_scores] == [2, 6]
    assert promoted.rung_scores[0][1] == single.heldout_loss
    assert [s for s, _ in promoted.curve] == list(range(1, 7))  # one curve, steps 1..6: not a new run at step 1

    # The reference: the same loop and schedule run for 6 steps in one go, nothing scored in between.
    reference_student = small_student()
    loop = _TrainingLoop(reference_student, targets, train, heldout, config, [1], total_steps=6, rungs=[2, 6])
    loop.run(_State(), None, progress=False, checkpoint_dir=None)
    for (name, got), (_, want) in zip(promoted_student.state_dict().items(), reference_student.state_dict().items()):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
    assert promoted.heldout_loss == loop.scorer.score()[0]

    stopped = run_short_trial(small_student(), targets, train, heldout, config, kept_layers=[1], rungs=[2, 6],
                              on_rung=lambda result: False)
    assert stopped.steps_done == 2 and stopped.heldout_loss == single.heldout_loss


# ---- the search ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def searches(tmp_path_factory):
    """The same seeded search twice: single fidelity, and --fidelities 1,3; in both, trial 5's student starts
    from noisy weights (a poor trial among them; whether it stops at rung 1 depends on where its config falls)."""
    shipped_by_value()
    tmp = tmp_path_factory.mktemp("fidelity")
    common = dict(trials=7, steps=3, sampler="random", seed=3, concurrency=2, early_stopping=False)
    single = _settings(tmp, "single", **common)
    multi = _settings(tmp, "multi", fidelities=[1, 3], **common)
    return {name: (settings, run_search(settings, before_training=Faults({5: "noise"})), load_study(settings.run_dir))
            for name, settings in (("single", single), ("multi", multi))}


def _trained(study):
    return [t for t in study.get_trials(deepcopy=False) if outcome_of(t) == Outcome.COMPLETE]


def test_the_study_records_fidelities_and_the_sampler_is_told_the_first_rung(searches):
    settings, result, study = searches["multi"]
    complete = _trained(study)
    assert len(complete) == settings.trials and not result.interrupted
    reached = {}
    for t in complete:
        fidelity, scores = t.user_attrs["fidelity"], t.user_attrs["heldout_loss_by_fidelity"]
        reached[t.number] = fidelity
        assert fidelity in (1, 3) and list(scores) == [str(f) for f in (1, 3) if f <= fidelity]
        assert t.user_attrs["steps_done"] == fidelity * settings.steps
        assert t.values[0] == scores["1"]  # the sampler's value: the fidelity-1 score of every trial
        assert t.user_attrs["heldout_loss"] == scores[str(fidelity)]  # the trial's own: at the fidelity reached
        saved = torch.load(settings.run_dir / "trials" / str(t.number) / "student.pt", weights_only=False)
        assert saved["provenance"]["steps"] == fidelity * settings.steps  # the student of its last rung
    assert 3 in reached.values(), "the first trial at rung 1 is always promoted"
    assert StudyRecord.read(study).identity()["fidelities"] == [1, 3]
    # Rung 1 of the multi-fidelity search is the single-fidelity search's trial: same seed, same configs, same score.
    single = {json_key(t): t.values[0] for t in _trained(searches["single"][2])}
    shared = [t for t in complete if json_key(t) in single]
    assert shared, "the seeded searches propose the same first configs"
    for t in shared:
        assert t.user_attrs["heldout_loss_by_fidelity"]["1"] == single[json_key(t)]


def json_key(trial) -> str:
    import json

    return json.dumps(trial.user_attrs["config"], sort_keys=True)


def test_the_front_is_built_at_the_top_fidelity(searches):
    settings, result, study = searches["multi"]
    complete = _trained(study)
    top = max(t.user_attrs["fidelity"] for t in complete)
    at_top = {t.number: (t.user_attrs["heldout_loss_by_fidelity"][str(top)], t.user_attrs["macs"])
              for t in complete if t.user_attrs["fidelity"] == top}
    expected = {n for n, p in at_top.items()
                if not any(all(a <= b for a, b in zip(q, p)) and q != p for q in at_top.values())}
    assert {row["trial"] for row in result.pareto} == expected
    assert all(row["fidelity"] == top and row["loss"] == at_top[row["trial"]][0] for row in result.pareto)
    assert all(row["objectives"]["heldout_loss"] == row["loss"] for row in result.pareto)


def test_the_report_shows_lower_fidelity_points_apart(searches):
    from sslc.dashboards.front import pareto_figure
    from sslc.dashboards.points import collect_points
    from sslc.runs.record import open_run

    settings, result, study = searches["multi"]
    run = open_run(settings.run_dir)
    points = collect_points(run)
    figure = pareto_figure(run, points)
    by_kind = {trace.meta: sorted(trace.customdata) for trace in figure.data if trace.customdata is not None}
    lower = sorted(t.number for t in _trained(study) if t.user_attrs["fidelity"] < 3)
    assert lower, "with eta 3, some of 7 trials stop at rung 1"
    assert by_kind["lower_fidelity"] == lower
    assert sorted(by_kind["pareto"]) == sorted(row["trial"] for row in result.pareto)
    front_trace = next(trace for trace in figure.data if trace.meta == "pareto")
    assert "at fidelity 3x" in front_trace.name and "fidelity 3x" in front_trace.text[0]


def test_a_trial_that_fails_after_a_rung_is_complete_at_that_rung(tmp_path):
    """Trial 0 is scored at rung 1 (3 steps), promoted (the first at a rung always is), and raises in its fourth
    step: it is recorded COMPLETE at fidelity 1 with its rung-1 score and student, the failure said, not FAIL."""
    shipped_by_value()
    settings = _settings(tmp_path, "fails-after-rung", trials=2, steps=3, fidelities=[1, 3], sampler="random",
                         seed=3, concurrency=1, early_stopping=False)
    run_search(settings, before_training=Faults({0: "raise-after-3"}))
    study = load_study(settings.run_dir)
    trial = study.get_trials(deepcopy=False)[0]
    assert outcome_of(trial) == Outcome.COMPLETE and trial.state == TrialState.COMPLETE
    scores = trial.user_attrs["heldout_loss_by_fidelity"]
    assert list(scores) == ["1"] and trial.user_attrs["fidelity"] == 1
    assert trial.values[0] == scores["1"] == trial.user_attrs["heldout_loss"]
    reason = trial.user_attrs["fail_reason"]
    assert reason.startswith("complete at fidelity 1; training on to the next rung failed") and "injected" in reason
    saved = torch.load(settings.run_dir / "trials" / "0" / "student.pt", weights_only=False)
    assert saved["provenance"]["steps"] == 3 and saved["provenance"]["fidelity"] == 1


@pytest.mark.parametrize("text", ["0,3", "3,1", "a", "1,1", "2,6", ""])
def test_bad_fidelities_are_one_line_and_exit_2(tmp_path, capsys, text):
    code = search_main(["--data", "demo", "--budget", "50%", "--teacher", "random:tiny", "--run-dir",
                        str(tmp_path / "run"), "--fidelities", text])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--fidelities" in err, err
    assert not (tmp_path / "run").exists()


def test_a_search_killed_mid_promotion_resumes(tmp_path):
    """SIGKILL while trial 0 trains on after its rung-1 score (recorded on the running trial), rerun: it is
    interrupted and run again, its retry reaches rung 1 with the same score, the study finishes."""
    run_dir = tmp_path / "resume"
    command = [*_tiny_search_command(run_dir, trials=2, steps=4), "--fidelities", "1,3"]
    env = _search_env()
    with_fault = [sys.executable, str(FAULTS_SCRIPT), "hang-after-4:0", "--", *command[3:]]

    def scored_and_training(trials):
        first = next((t for t in trials if t.number == 0), None)
        return first is not None and first.state == TrialState.RUNNING and "heldout_loss_by_fidelity" in first.user_attrs

    with _search_process(with_fault, env, tmp_path / "stderr") as process:
        _wait_for_trials(process, run_dir, tmp_path / "stderr", scored_and_training, "trial 0 promoted", timeout=600)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    first_run = load_study(run_dir).get_trials(deepcopy=False)[0]
    rung_one = first_run.user_attrs["heldout_loss_by_fidelity"]["1"]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    trials = load_study(run_dir).get_trials(deepcopy=False)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert outcome_of(trials[0]) == Outcome.INTERRUPTED
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 0)
    assert outcome_of(retry) == Outcome.COMPLETE and retry.user_attrs["heldout_loss_by_fidelity"]["1"] == rung_one
    assert sum(outcome_of(t) == Outcome.COMPLETE for t in trials) == 2
