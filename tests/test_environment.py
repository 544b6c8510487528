"""What the declared dependencies must cover: every module imports, and the default sampler runs past its start-up.

`make test` runs the suite in `.venv-test`, a venv holding only what pyproject.toml declares (no system site
packages), so a module or a default code path that needs an undeclared package fails here, not on a user's machine.
"""

from __future__ import annotations

import importlib
import pkgutil

import optuna
from optuna.trial import TrialState

import sslc
from sslc.search.samplers import make_sampler

# Optional extras: importing these modules must not need them (they import them lazily, with a clear error).
OPTIONAL = ("torchaudio",)


def test_every_module_of_sslc_imports():
    names = [info.name for info in pkgutil.walk_packages(sslc.__path__, prefix="sslc.")]
    assert len(names) > 40 and "sslc.search.runner" in names and "sslc.cli.search" in names
    failures = {}
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:
            failures[name] = f"{type(error).__name__}: {error}"
    assert not failures


def test_the_default_gp_sampler_runs_past_its_start_up_trials():
    # The GP sampler proposes at random for its first 10 trials; from the 11th it fits a GP (scipy, torch).
    sampler = make_sampler("gp", seed=0, trials=14)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)

    def objective(trial):
        x, y = trial.suggest_float("x", 0, 1), trial.suggest_int("y", 1, 8)
        return x * x + y / 8, (1 - x) ** 2 + 1 / y

    study.optimize(objective, n_trials=14, catch=())
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 14
    assert len({(t.params["x"], t.params["y"]) for t in trials}) == 14
