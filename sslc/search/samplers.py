"""Which Optuna sampler proposes the next config.

Default: multi-objective TPE (multivariate, grouped). The search has few (tens of) expensive trials in a
conditional space (per-layer knobs exist only for the chosen depth); TPE models such define-by-run spaces
directly, needs no population of generations like NSGA-II, and stays cheap per suggestion unlike the GP sampler.
`constant_liar` keeps parallel trials from proposing the same config. benchmarks/sampler_quality.py measures it
against random search.
"""

from __future__ import annotations

import warnings

import optuna

SAMPLERS = ("tpe", "nsga2", "gp", "random")


def make_sampler(name: str, seed: int, trials: int, concurrency: int = 1) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        with warnings.catch_warnings():  # `multivariate` and `group` are marked experimental, and work
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed,
                multivariate=True,
                group=True,
                constant_liar=concurrency > 1,
                n_startup_trials=max(4, min(10, trials // 3)),
            )
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 3)))
    if name == "gp":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose from {SAMPLERS}")
