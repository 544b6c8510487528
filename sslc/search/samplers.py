"""Which Optuna sampler proposes the next config.

Default: Optuna's Gaussian-process sampler (multi-objective, log expected hypervolume improvement). A search has
few (tens of) expensive trials, which is where a GP model is most sample-efficient. Measured with
benchmarks/sampler_quality.py (32 trials, 5 seeds, zero-step trials on a half-width HuBERT-Base): GP reached
1.22x the hypervolume of random search; multi-objective TPE (tried multivariate/grouped, univariate, fewer
start-up trials) and NSGA-II stayed at 0.9-1.0x. A GP suggestion costs seconds instead of milliseconds, which
is small against trials of minutes. `--sampler tpe|nsga2|random` remain available.

The budget reaches the samplers twice. Their random start-up (`startup_trials`) knows nothing of it, so the
searcher draws those trials itself among the space's configs within the budget. After that, constraint values the
searcher sets on every trial (`Trial.set_constraint`) are read by Optuna 5's GP (constrained LogEHVI), TPE
(infeasible trials ranked by violation) and NSGA-II (constrained domination) from the trials themselves: no
`constraints_func` (deprecated in Optuna 5) is passed. Random search ignores both (it is the reference).
With both, sampler_quality (40% budget, 4 seeds) measured 1 of 129 asked configs over budget for gp (9.2%, 13 of
141, before either) and gp at 1.32x the hypervolume of random search.
"""

from __future__ import annotations

import warnings

import optuna

from .settings import SAMPLERS

GP_STARTUP_TRIALS = 10  # GPSampler's own default, given explicitly so `startup_trials` can say it


def startup_trials(name: str, trials: int) -> int:
    """How many trials sampler `name` draws at random before it models anything (0 for "random", which never
    does). The searcher draws these within the budget itself (see `OptunaAskTellSearcher`)."""
    if name in ("tpe", "nsga2"):  # TPE's start-up trials, NSGA-II's first generation
        return max(4, min(10 if name == "tpe" else 50, trials // 3))
    return GP_STARTUP_TRIALS if name == "gp" else 0


def make_sampler(name: str, seed: int, trials: int, concurrency: int = 1) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        with warnings.catch_warnings():  # `multivariate` and `group` are marked experimental, and work
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed,
                multivariate=True,
                group=True,
                constant_liar=concurrency > 1,
                n_startup_trials=startup_trials(name, trials),
            )
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=startup_trials(name, trials))
    if name == "gp":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=GP_STARTUP_TRIALS)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose from {SAMPLERS}")
