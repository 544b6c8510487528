"""The budget as Optuna constraint values (issue 13): an over-budget config is never trained, is told to Optuna as
COMPLETE with a positive constraint value (so the samplers learn where the budget ends) and placeholder values,
and reads back as infeasible everywhere sslc looks; a study an older sslc wrote (FAIL + infeasible) still reads
and resumes."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pytest
from faults import ReplaySampler
from optuna.trial import TrialState

from sslc.budget import Budget
from sslc.dashboards.history import _scored_study
from sslc.metrics import count_macs
from sslc.models import tiny_config
from sslc.runs import trials as record
from sslc.runs.record import RunRecord
from sslc.runs.trials import Outcome, TrialRecord, count_trained, front_trials, outcome_of, pending_retries
from sslc.search.pareto import write_pareto
from sslc.search.searcher import OptunaAskTellSearcher, uses_constraints
from sslc.spaces import SearchSpace

TEACHER_MACS = count_macs(tiny_config(), seconds=10).total
BUDGET = Budget(max_macs=int(0.4 * TEACHER_MACS), seconds=10.0)  # rules out about two thirds of random configs


def _searcher(study, budget=BUDGET, trials=10):
    return OptunaAskTellSearcher(study, SearchSpace.load("combined"), tiny_config(), budget, ["loss", "macs"], trials)


def _train(searcher, tune_id: str, loss: float) -> int:
    """What a trial of the search does with a suggested config, without Ray: complete with `loss`."""
    params = searcher.suggest(tune_id)
    assert params["macs"] <= searcher.budget.max_macs  # only configs within the budget are ever handed out to train
    searcher.on_trial_complete(tune_id, {
        "final": True, "status": "completed", "heldout_loss": loss, "macs": params["macs"], "latency_ms": 2.0,
        "heldout_loss_by_target_pairs": [["2", loss]],
    })
    return params["trial_number"]


def _study(sampler=None):
    return optuna.create_study(directions=["minimize", "minimize"],
                               sampler=sampler or optuna.samplers.RandomSampler(seed=3))


def test_over_budget_configs_are_complete_in_optuna_with_a_positive_constraint_and_never_trained(tmp_path):
    study = _study()
    searcher = _searcher(study)
    trained = [_train(searcher, str(i), loss) for i, loss in enumerate((2.0, 1.5, 3.0, 2.5))]
    trials = study.get_trials()
    over = [t for t in trials if outcome_of(t) == Outcome.INFEASIBLE]
    assert over, "the budget must rule some configs out"
    assert sorted(t.number for t in trials if outcome_of(t) == Outcome.COMPLETE) == trained
    first = trained[0]
    for t in trials:
        macs = t.user_attrs[record.MACS]
        assert (t.constraints["macs"] > 0) == (macs > BUDGET.max_macs)  # set on every trial, feasible or not
        assert t.constraints["macs"] == pytest.approx((macs - BUDGET.max_macs) / BUDGET.max_macs)
        assert set(t.constraints) == {"macs"}  # no --max-params: no params constraint
        if outcome_of(t) != Outcome.INFEASIBLE:
            continue
        assert t.number not in searcher.running and "heldout_loss" not in t.user_attrs
        assert TrialRecord.read(t).outcome == Outcome.INFEASIBLE and "infeasible" in t.user_attrs["fail_reason"]
        if t.number < first:  # nothing trained yet: no placeholder to give, FAIL as before
            assert t.state == TrialState.FAIL and t.values is None
        else:  # placeholders: the lowest loss trained so far, the exact MACs
            losses = [study.trials[n].values[0] for n in trained if n < t.number]
            assert t.state == TrialState.COMPLETE and t.values == [min(losses), macs / 1e9]
    assert any(t.state == TrialState.COMPLETE for t in over)

    # Off everything that reads trained trials: the front, the Pareto files, the trained count, retries.
    assert count_trained(study) == len(trained) and searcher.started == len(trained)
    assert {t.number for t in front_trials(study)} <= set(trained)
    assert {row["trial"] for row in write_pareto(study, tmp_path)} <= set(trained)
    assert {t.number for t in study.best_trials} <= set(trained)  # Optuna's own front skips infeasible trials
    assert pending_retries(study) == []
    scored = _scored_study(RunRecord(Path(tmp_path), study))  # what the importance/parallel plots see
    assert [t.values for t in scored.trials] == [t.values for t in trials if t not in over]  # renumbered

    # Resumed: an over-budget config proposed again is a repeat, still infeasible, still never trained.
    again = next(t for t in over if t.state == TrialState.COMPLETE)
    study.sampler = ReplaySampler({len(trials): again.number})
    resumed = _searcher(study)
    assert resumed.started == len(trained) and resumed.constrained
    _train(resumed, "r", 1.0)
    repeat = study.trials[len(trials)]
    assert repeat.user_attrs["repeat_of"] == again.number and outcome_of(repeat) == Outcome.INFEASIBLE
    assert repeat.state == TrialState.COMPLETE and repeat.constraints["macs"] == again.constraints["macs"] > 0
    assert count_trained(study) == len(trained) + 1


def test_a_params_limit_is_a_second_constraint():
    study = _study()
    budget = Budget(max_macs=10**15, seconds=10.0, max_params=10**9)
    searcher = _searcher(study, budget)
    searcher.suggest("a")
    trial = study.trials[0]
    params = trial.user_attrs[record.PARAMS]
    assert trial.constraints == {
        "macs": pytest.approx((trial.user_attrs[record.MACS] - 10**15) / 10**15),
        "params": pytest.approx((params - 10**9) / 10**9),
    }


def _old_study() -> optuna.Study:
    """A study as sslc wrote it before constraints: trained trials COMPLETE without constraint values, an
    over-budget one FAIL with the infeasible mark."""
    study = _study()
    space = SearchSpace.load("combined")
    for n in range(6):
        trial = study.ask()
        config = space.suggest(trial, tiny_config())
        macs = count_macs(config.student_architecture(tiny_config()), seconds=10).total
        trial.set_user_attr(record.CONFIG, config.to_dict())
        trial.set_user_attr(record.MACS, macs)
        if macs > BUDGET.max_macs:
            trial.set_user_attr(record.FAIL_REASON, "infeasible (not trained): over budget")
            trial.set_user_attr(record.INFEASIBLE, True)
            study.tell(trial, state=TrialState.FAIL)
        else:
            trial.set_user_attr(record.HELDOUT_LOSS, 1.0 + n)
            study.tell(trial, [1.0 + n, macs / 1e9])
    assert {t.state for t in study.trials} == {TrialState.COMPLETE, TrialState.FAIL}
    return study


def test_a_study_from_an_older_sslc_reads_as_before_and_resumes_without_constraints(tmp_path):
    study = _old_study()
    old = study.get_trials()
    for t in old:
        assert outcome_of(t) == (Outcome.INFEASIBLE if t.state == TrialState.FAIL else Outcome.COMPLETE)
    assert count_trained(study) == sum(t.state == TrialState.COMPLETE for t in old) and not pending_retries(study)
    assert {t.number for t in front_trials(study)} <= {t.number for t in old if t.state == TrialState.COMPLETE}

    # Its complete trials carry no constraint values, and GPSampler refuses a study where only some do: the
    # resumed search goes on the old way (FAIL, no constraints), and the GP sampler still proposes.
    assert not uses_constraints(study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.GPSampler(seed=0, n_startup_trials=2)
    searcher = _searcher(study)
    assert not searcher.constrained
    for i in range(2):
        _train(searcher, str(i), 0.5)
    new = study.get_trials()[len(old):]
    assert all(not t.constraints for t in new)
    assert all(t.state == TrialState.FAIL for t in new if outcome_of(t) == Outcome.INFEASIBLE)

    # A study with only FAIL over-budget trials and nothing trained takes constraints from now on.
    fresh = _study()
    for t in old:
        if t.state == TrialState.FAIL:
            fresh.add_trial(t)
    assert uses_constraints(fresh) and _searcher(fresh).constrained


def test_the_gp_sampler_learns_from_infeasible_trials_and_keeps_asking():
    """GPSampler with the constraint values, FAIL (before anything was trained) and COMPLETE infeasible trials
    mixed: its constrained acquisition runs (it raises if complete trials carry different constraints)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = _study(optuna.samplers.GPSampler(seed=0, n_startup_trials=3))
    searcher = _searcher(study)
    for i in range(5):
        _train(searcher, str(i), 3.0 - 0.1 * i)
    assert count_trained(study) == 5
    assert all(t.constraints for t in study.trials)


def test_the_samplers_random_start_up_is_drawn_within_the_budget():
    """The first `startup_trials` trials are drawn by the searcher from the space's configs within the budget: no
    over-budget ask, the trial params rebuild the config, and a searcher without start-up asks the sampler."""
    space = SearchSpace.load("combined")
    study = _study(optuna.samplers.RandomSampler(seed=3))
    searcher = OptunaAskTellSearcher(study, space, tiny_config(), BUDGET, ["loss", "macs"], 8, startup_trials=6,
                                     seed=0)
    for k in range(6):
        _train(searcher, f"s{k}", 1.0 + k)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 6 and all(outcome_of(t) == Outcome.COMPLETE for t in trials)
    for t in trials:  # the enqueued params give back the config that was trained
        replay = optuna.trial.FixedTrial(t.params)
        assert space.suggest(replay, tiny_config()).to_dict() == t.user_attrs["config"]
    # Without the start-up draws, the same random sampler proposes over-budget configs (about two thirds).
    plain = _study(optuna.samplers.RandomSampler(seed=3))
    other = _searcher(plain, trials=8)
    for k in range(6):
        _train(other, f"p{k}", 1.0 + k)
    assert sum(outcome_of(t) == Outcome.INFEASIBLE for t in plain.get_trials(deepcopy=False)) > 0


def test_warm_start_asks_the_baselines_shapes_first_within_the_budget_then_the_start_up():
    """The baselines' shapes, as the space's nearest configs, are the study's first trials (those within the
    budget, each once, named in a user attr); the random start-up follows; a resumed study does not ask them
    again."""
    from sslc.search.baselines import baseline_configs

    space, teacher = SearchSpace.load("combined"), tiny_config()
    budget = Budget(max_macs=int(0.75 * TEACHER_MACS), seconds=10.0)  # the 2-layer tiny teacher's anchors: 68-72%
    shapes = baseline_configs(teacher, budget.max_macs, budget.seconds)
    fitting = {}
    for name, config in shapes.items():
        nearest, _ = space.params_near(config, teacher)
        if count_macs(nearest.student_architecture(teacher), seconds=10).total <= budget.max_macs:
            fitting.setdefault(str(nearest.to_dict()), (name, nearest))
    assert 0 < len(fitting) < len(shapes)  # some shapes fit this budget, one (the whole teacher) does not
    study = _study(optuna.samplers.RandomSampler(seed=3))
    searcher = OptunaAskTellSearcher(study, space, teacher, budget, ["loss", "macs"], 8, startup_trials=4, seed=0,
                                     warm_start=shapes)
    for k in range(5):
        _train(searcher, f"w{k}", 1.0 + k)
    trials = study.get_trials(deepcopy=False)
    warm = [t for t in trials if "warm_start" in t.user_attrs]
    assert [t.number for t in warm] == list(range(len(fitting)))
    assert [(t.user_attrs["warm_start"], t.user_attrs["config"]) for t in warm] == [
        (name, nearest.to_dict()) for name, nearest in fitting.values()
    ]
    assert all(outcome_of(t) == Outcome.COMPLETE for t in trials)  # the start-up after them: within budget too
    resumed = OptunaAskTellSearcher(study, space, teacher, budget, ["loss", "macs"], 8, startup_trials=4, seed=0,
                                    warm_start=shapes)
    _train(resumed, "r0", 0.5)
    assert "warm_start" not in study.get_trials(deepcopy=False)[-1].user_attrs


def test_a_warm_start_shape_over_the_budget_is_asked_with_a_narrower_ffn():
    """At 40%, uniform pruning's shape lands just over the budget on the space's grid: it is asked with its FFN
    narrowed until it fits; shapes that no FFN width brings within the budget are left out."""
    from sslc.search.baselines import baseline_configs

    space, teacher = SearchSpace.load("combined"), tiny_config()
    shapes = baseline_configs(teacher, BUDGET.max_macs, BUDGET.seconds)
    nearest, _ = space.params_near(shapes["uniform"], teacher)
    assert count_macs(nearest.student_architecture(teacher), seconds=10).total > BUDGET.max_macs
    searcher = OptunaAskTellSearcher(_study(), space, teacher, BUDGET, ["loss", "macs"], 8, startup_trials=4,
                                     warm_start=shapes)
    assert [name for name, _ in searcher.warm_start] == ["uniform"]
    asked = space.suggest(optuna.trial.FixedTrial(searcher.warm_start[0][1]), teacher)
    assert count_macs(asked.student_architecture(teacher), seconds=10).total <= BUDGET.max_macs
    assert asked.heads == nearest.heads and asked.conv_channels == nearest.conv_channels
    assert all(a < b for a, b in zip(asked.ffn, nearest.ffn))
