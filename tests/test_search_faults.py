"""The search driver under faults and repeats: a failing sampler ends the search with one line and a clean study
that resumes; a config already tried is answered from its earlier trial, never trained twice."""

from __future__ import annotations

import json

import optuna
import pytest
from faults import ReplaySampler
from optuna.trial import TrialState

from sslc.budget import Budget
from sslc.cli.common import cli_entry
from sslc.errors import SearchFailed, UserError
from sslc.models import tiny_config
from sslc.runs.storage import load_study
from sslc.runs.trials import count_trained, front_trials, outcome_of
from sslc.search.pareto import write_pareto
from sslc.search.runner import SearchSettings, run_search
from sslc.search.searcher import MAX_REPEATS_IN_A_ROW, OptunaAskTellSearcher
from sslc.spaces import SearchSpace


class FailingSampler(optuna.samplers.RandomSampler):
    """Random for the first `after` trials, then raises, as the GP sampler did without scipy."""

    def __init__(self, after: int):
        super().__init__(seed=0)
        self.after = after

    def sample_independent(self, study, trial, name, distribution):
        if trial.number >= self.after:
            raise ModuleNotFoundError("No module named 'scipy'")
        return super().sample_independent(study, trial, name, distribution)


def _searcher(study, events=None, early_stopped=()):
    budget = Budget(max_macs=10**15, seconds=10.0)  # every config fits: what is infeasible is said by a trial
    return OptunaAskTellSearcher(
        study, SearchSpace.load("combined"), tiny_config(), budget, ["loss", "macs"], target_trials=10,
        on_event=(lambda kind, trial: events.append(kind)) if events is not None else None,
        early_stopped=early_stopped,
    )


def _completed(macs: int, loss: float) -> dict:
    return {
        "final": True, "status": "completed", "heldout_loss": loss, "macs": macs, "latency_ms": 2.0,
        "heldout_loss_by_target_pairs": [["2", loss]],
    }


def test_a_repeated_config_is_answered_from_its_earlier_trial_never_trained_twice(tmp_path):
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    stopped: set[str] = set()
    first = _searcher(study, early_stopped=stopped)
    # Trial 0 completes (with a result attr of a kind the searcher does not know), 1 is stopped early (pruned),
    # 2 is over the latency budget (measured by the trial), 3 is cut short by the end of the search.
    params = first.suggest("a")
    first.running["a"].set_user_attr("some_future_result", {"layer_2": 0.5})
    first.on_trial_complete("a", _completed(params["macs"], 1.25))
    params = first.suggest("b")
    stopped.add("b")
    first.on_trial_complete("b", {"final": False, "step": 2, "train_loss": 3.0, "macs": params["macs"]})
    first.suggest("c")
    first.on_trial_complete("c", {"final": True, "status": "infeasible", "reason": "latency 9 ms > 5 ms"})
    first.suggest("d")
    first.abandon_running()
    assert [outcome_of(t).value for t in study.get_trials()] == ["complete", "pruned", "infeasible", "interrupted"]
    assert not study.get_trials(states=(TrialState.WAITING, TrialState.RUNNING))  # the retry is not queued yet

    # The resumed search: its sampler proposes the configs of trials 0, 1 and 2 again after the retry of 3.
    study.sampler = ReplaySampler({5: 0, 6: 1, 7: 2})
    events: list[str] = []
    resumed = _searcher(study, events)
    assert resumed.started == 2 and [number for number, _ in resumed.retries] == [3]
    assert resumed.suggest("e")["trial_number"] == 4  # the interrupted config runs again
    assert resumed.suggest("f")["trial_number"] == 8  # 5, 6, 7 were answered without training
    assert events.count("repeat") == 3 and resumed.started == 4

    trials = {t.number: t for t in study.get_trials()}
    assert trials[4].user_attrs["retry_of"] == 3 and trials[4].params == trials[3].params
    for repeat, original in ((5, 0), (6, 1), (7, 2)):
        assert trials[repeat].user_attrs["repeat_of"] == original
        assert trials[repeat].user_attrs["config"] == trials[original].user_attrs["config"]
        assert trials[repeat].state == trials[original].state
        assert "retry_of" not in trials[repeat].user_attrs
    assert trials[5].values == trials[0].values
    assert trials[5].user_attrs["heldout_loss"] == 1.25
    assert trials[5].user_attrs["heldout_loss_by_target"] == {"2": 1.25}
    assert trials[5].user_attrs["some_future_result"] == {"layer_2": 0.5}  # copied generically
    assert trials[6].user_attrs["stopped_at_step"] == 2
    assert trials[7].user_attrs["infeasible"] and "latency" in trials[7].user_attrs["fail_reason"]
    assert [outcome_of(trials[n]).value for n in (5, 6, 7)] == ["repeat", "repeat", "infeasible"]

    # Counted once, on the front once (Optuna's own best_trials lists the point twice: why the search filters).
    assert count_trained(study) == 2
    assert {t.number for t in study.best_trials} == {0, 5}
    assert [t.number for t in front_trials(study)] == [0]
    assert [row["trial"] for row in write_pareto(study, tmp_path)] == [0]
    assert [row["trial"] for row in json.loads((tmp_path / "pareto.json").read_text())["points"]] == [0]

    resumed.abandon_running()
    assert not study.get_trials(states=(TrialState.WAITING, TrialState.RUNNING))
    assert {outcome_of(t).value for t in study.get_trials() if t.number in (4, 8)} == {"interrupted"}


def test_a_sampler_that_only_repeats_ends_the_search_with_one_line():
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    searcher = _searcher(study)
    params = searcher.suggest("a")
    searcher.on_trial_complete("a", _completed(params["macs"], 1.0))
    study.sampler = ReplaySampler(dict.fromkeys(range(1, 1000), 0))
    with pytest.raises(UserError, match="already tried: space 'combined' looks exhausted"):
        searcher.suggest("b")
    assert len(study.get_trials()) == 1 + MAX_REPEATS_IN_A_ROW
    assert count_trained(study) == 1 and [t.number for t in front_trials(study)] == [0]


def _settings(tmp_path, **overrides) -> SearchSettings:
    base = dict(
        teacher="random:tiny", data="demo", budget="100%", trials=3, steps=2, batch_size=2, crop_seconds=1.0,
        name="faults", run_dir=tmp_path / "faults", latency_repeats=1, baselines=False, quiet=True,
        concurrency=1, early_stopping=False,
    )
    return SearchSettings(**{**base, **overrides})


def test_a_failing_sampler_ends_the_search_cleanly_and_a_rerun_resumes(tmp_path, capsys):
    settings = _settings(tmp_path)

    @cli_entry
    def main(argv=None):
        run_search(settings, sampler=FailingSampler(after=2))

    assert main([]) == SearchFailed.exit_code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: the search stopped: the FailingSampler sampler failed: ModuleNotFoundError")
    assert "rerun with --name faults to resume" in lines[0]
    assert "ModuleNotFoundError" in (settings.run_dir / "search-error.txt").read_text()

    study = load_study(settings.run_dir)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert outcome_of(trials[2]).value == "interrupted"  # asked, but the sampler failed on it: not counted
    rows = json.loads((settings.run_dir / "pareto.json").read_text())["points"]
    assert {row["trial"] for row in rows} == {t.number for t in front_trials(study)} and rows

    # The rerun resumes: its sampler first proposes trial 0's config again (answered, not trained), then a new one.
    result = run_search(settings, sampler=ReplaySampler({3: 0}))
    assert not result.interrupted
    study = load_study(settings.run_dir)
    trials = {t.number: t for t in study.get_trials()}
    assert not study.get_trials(states=(TrialState.WAITING, TrialState.RUNNING))
    assert trials[3].user_attrs["repeat_of"] == 0 and trials[3].values == trials[0].values
    assert not (settings.run_dir / "trials" / "3").exists()
    assert trials[4].state == TrialState.COMPLETE and (settings.run_dir / "trials" / "4" / "student.pt").exists()
    assert count_trained(study) == 3 and len(trials) == 5
    rows = json.loads((settings.run_dir / "pareto.json").read_text())["points"]
    assert 3 not in {row["trial"] for row in rows}
    assert len({json.dumps(row["config"], sort_keys=True) for row in rows}) == len(rows)


def test_a_stopped_study_keeps_no_running_or_waiting_trial_and_retries_each_config_once():
    from sslc.runs.trials import pending_retries
    from sslc.search.storage import recover_interrupted

    study = optuna.create_study(directions=["minimize", "minimize"])
    running = study.ask()
    running.suggest_int("layers", 1, 4)
    study.ask()  # killed before its config was chosen: nothing to run again
    study.enqueue_trial({"layers": 3}, user_attrs={"retry_of": 7})  # a retry queued, never asked
    assert recover_interrupted(study) == 3
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    assert [outcome_of(t).value for t in trials] == ["interrupted"] * 3
    assert [t.user_attrs.get("retry_params") for t in trials] == [running.params, None, {"layers": 3}]
    assert pending_retries(study) == [(0, running.params), (2, {"layers": 3})]
    study.enqueue_trial(running.params, user_attrs={"retry_of": 0})
    assert pending_retries(study) == [(2, {"layers": 3})]  # each interrupted config is queued once
