"""The search's small decisions, each against an independent reference: the preset spaces and the space-file
errors, `smallest()` / `largest()` against sampled configs, the dominance stopper's rule, uniform pruning to a
budget, and which sampler each name builds."""

from __future__ import annotations

import random
from types import SimpleNamespace

import optuna
import pytest
from ray.tune.schedulers import TrialScheduler

from sslc.compress import CompressionConfig
from sslc.metrics import count_macs
from sslc.models import PRESETS, tiny_config
from sslc.search.baselines import uniform_config, uniform_to_budget
from sslc.search.samplers import make_sampler
from sslc.search.scheduler import DominanceStopper
from sslc.search.settings import SAMPLERS, preset_names
from sslc.spaces import SearchSpace
from sslc.spaces.space import SpaceError

TEACHERS = {"tiny": tiny_config(), "base": PRESETS["hubert-base"](), "tiny-wavlm": PRESETS["tiny-wavlm"]()}


def macs_of(config: CompressionConfig, teacher) -> int:
    return count_macs(config.student_architecture(teacher), seconds=1.0).total


def test_a_searched_depth_leaves_the_gp_sampler_every_layers_knobs_to_model(caplog):
    """With depth searched, every trial still carries every layer's knobs (those past its depth unused), so the
    params all trials share, which are all Optuna's GPSampler models, include the deepest layer's: after its
    start-up the GP draws no knob at random ("sampled independently"), and a shallow trial's config is what its
    own layers' params give."""
    space, teacher = SearchSpace.load("combined"), TEACHERS["base"]
    sampler = optuna.samplers.GPSampler(seed=0, n_startup_trials=4)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    depths = []
    with caplog.at_level("WARNING", logger="optuna"):
        for n in range(6):
            trial = study.ask()
            config = space.suggest(trial, teacher)
            depths.append(len(config.layers))
            study.tell(trial, [float(n % 3), float(macs_of(config, teacher))])
    assert len(set(depths)) > 1 and min(depths) < teacher.num_layers
    shared = optuna.search_space.intersection_search_space(study.get_trials(deepcopy=False))
    assert {f"{knob}_{teacher.num_layers - 1}" for knob in ("heads", "ffn_keep", "attn_rank", "ffn_rank")} <= set(shared)
    assert "sampled independently" not in caplog.text
    shallow = study.get_trials(deepcopy=False)[depths.index(min(depths))]
    rebuilt = space.suggest(optuna.trial.FixedTrial(shallow.params), teacher)
    assert len(rebuilt.layers) == min(depths)
    assert rebuilt.heads == [shallow.params[f"heads_{k}"] for k in range(min(depths))]


# ---- preset spaces and space files ---------------------------------------------------------------------------
@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_loads_round_trips_and_builds_valid_configs(preset):
    space = SearchSpace.load(preset)
    assert space.name == preset and space.description
    again = SearchSpace.from_dict(space.to_dict())
    assert again.to_dict() == space.to_dict()
    rng = random.Random(0)
    for name, teacher in TEACHERS.items():
        for config in [space.smallest(teacher), space.largest(teacher)] + [space.sample(teacher, rng) for _ in range(20)]:
            config.validate(teacher)  # raises on any inconsistency with the teacher
            assert len(config.heads) == len(config.layers) == len(config.ffn), (preset, name)
            assert all(0 <= h <= teacher.layers[t].heads for h, t in zip(config.heads, config.layers))
            assert all(0 <= f <= teacher.layers[t].ffn_dim for f, t in zip(config.ffn, config.layers))


@pytest.mark.parametrize("preset", preset_names())
def test_no_sampled_config_is_cheaper_than_smallest_or_dearer_than_largest(preset):
    space, rng = SearchSpace.load(preset), random.Random(1)
    for teacher in (TEACHERS["tiny"], TEACHERS["base"]):
        low, high = macs_of(space.smallest(teacher), teacher), macs_of(space.largest(teacher), teacher)
        sampled = [macs_of(space.sample(teacher, rng), teacher) for _ in range(150)]
        assert low <= min(sampled) and max(sampled) <= high, (preset, low, min(sampled), max(sampled), high)
        assert low < high or len(set(sampled)) == 1


@pytest.mark.parametrize("preset", preset_names())
def test_params_near_gives_back_a_spaces_own_config_and_snaps_a_shape_from_outside(preset):
    """`params_near` inverts sampling: a sampled config comes back as itself, its params rebuilding it through
    an Optuna trial; a config from outside the space lands on the space's grid, knob by knob."""
    space, rng = SearchSpace.load(preset), random.Random(2)
    for name, teacher in TEACHERS.items():
        for _ in range(40):
            config = space.sample(teacher, rng)
            nearest, params = space.params_near(config, teacher)
            assert nearest.to_dict() == config.to_dict(), (preset, name)
            assert space.suggest(optuna.trial.FixedTrial(params), teacher).to_dict() == config.to_dict()
    if preset == "combined":
        teacher = TEACHERS["base"]
        outside = CompressionConfig.identity(teacher)  # FFN 2950 of 3072 is 0.960: the 0.05 grid gives 0.95
        outside.ffn = [2950] * teacher.num_layers
        nearest, params = space.params_near(outside, teacher)
        assert nearest.ffn == [round(0.95 * 3072)] * 12 and params["ffn_keep_0"] == pytest.approx(0.95)
        assert nearest.heads == outside.heads and nearest.conv_channels == outside.conv_channels


@pytest.mark.parametrize(
    "content, expected",
    [
        ("depth: {min: 2, max: all}\nheadz: 3\n", "unknown key 'headz'"),
        ("heads: []\n", "key 'heads' has an empty list of choices"),
        ("depth: {min: 5, max: 2}\n", "key 'depth': min 5 is above max 2"),
        ("ffn_keep: 1.5\n", "key 'ffn_keep' must be a fraction in [0, 1]"),
        ("conv_keep: 0\n", "key 'conv_keep' must be a fraction in (0, 1]"),
        ("sparsity: 1.0\n", "key 'sparsity' must be a fraction in [0, 1)"),
        ("attn_rank: [full, 2]\n", "key 'attn_rank'[1] must be 'full' or a share"),
        ("layer_selection: middle\n", "key 'layer_selection' must be one of"),
        ("quantize: [none, int4]\n", "key 'quantize'[1] must be one of"),
        ("depth: {max: 3}\n", "a range needs 'min' and 'max'"),
        ("ffn_keep: {min: 0.1, max: 1.0, step: -1}\n", "key 'ffn_keep'.step must be positive"),
        ("heads: -1\n", "key 'heads' must be a non-negative integer (0 removes the attention block) or 'all'"),
        ("depth: 0\n", "key 'depth' must be a positive integer or 'all'"),
        ("ffn_keep: -0.1\n", "key 'ffn_keep' must be a fraction in [0, 1] (0 removes the FFN block)"),
        ("- depth\n", "expected a mapping of knob names"),
        ("depth: [2, 3\n", "is not valid YAML/JSON"),
    ],
)
def test_space_file_errors_name_the_file_and_the_key(tmp_path, content, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(SpaceError) as caught:
        SearchSpace.load(str(path))
    message = str(caught.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_a_missing_space_file_names_the_presets(tmp_path):
    with pytest.raises(SpaceError, match="not found.*combined"):
        SearchSpace.load(str(tmp_path / "nothing.yaml"))


# ---- the dominance stopper -------------------------------------------------------------------------------------
def test_dominance_stopper_stops_only_dominated_trials_with_enough_peers():
    stopper = DominanceStopper([10], min_peers=2, min_dominators=2)
    # (trial, MACs, training loss at the rung): the first three only fill the rung (too few peers to judge).
    assert not stopper.decide("a", 10, macs=5.0, loss=1.0)
    assert not stopper.decide("b", 10, macs=6.0, loss=0.9)
    assert not stopper.decide("c", 12, macs=4.0, loss=2.0)  # crossed the rung at 12 steps: judged at the rung
    # d: larger than a and b and worse than both -> two dominators, three peers: stopped.
    assert stopper.decide("d", 10, macs=7.0, loss=1.5)
    # e: worse than everyone but the smallest model -> nobody is both no larger and better: kept.
    assert not stopper.decide("e", 10, macs=1.0, loss=9.0)
    # f: dominated by b only (a is better but c and e are smaller-and-worse): one dominator < 2: kept.
    assert not stopper.decide("f", 10, macs=6.0, loss=0.95)
    # A trial is judged once per rung: reporting again at the same rung changes nothing.
    assert not stopper.decide("f", 11, macs=6.0, loss=5.0)
    assert not stopper.decide("x", 9, macs=9.0, loss=9.0)  # not at the rung yet: never stopped
    assert [m for m, _ in stopper.records[10]] == [5.0, 6.0, 4.0, 7.0, 1.0, 6.0]


def test_dominance_stopper_never_stops_a_protected_trial_but_counts_it():
    stopper = DominanceStopper([10], min_peers=2, min_dominators=2)
    assert not stopper.decide("a", 10, macs=5.0, loss=1.0)
    assert not stopper.decide("b", 10, macs=6.0, loss=0.9)
    assert not stopper.decide("c", 10, macs=4.0, loss=2.0)
    # Dominated by a and b with three peers, as d above: a protected trial goes on all the same...
    assert not stopper.decide("warm", 10, macs=7.0, loss=1.5, protected=True)
    assert stopper.decide("d", 10, macs=7.0, loss=1.5)  # (the same point unprotected is stopped)
    assert [m for m, _ in stopper.records[10]] == [5.0, 6.0, 4.0, 7.0, 7.0]  # ...and is recorded as a peer
    # Through Tune's scheduler API: a trial whose config the searcher marked as the warm start's is protected.
    for trial_id, warm in (("w", "fithubert-like+cnn75%"), ("x", None)):
        trial = SimpleNamespace(trial_id=trial_id, config={"trial_number": 0, "warm_start": warm})
        decision = stopper.on_trial_result(None, trial, {"step": 10, "macs": 9.0, "train_loss": 3.0})
        assert decision == (TrialScheduler.CONTINUE if warm else TrialScheduler.STOP)


def test_a_stopper_given_the_peers_of_an_earlier_run_decides_as_that_run_would():
    first = DominanceStopper([10, 20], min_peers=2, min_dominators=2)
    for key, macs, loss in (("a", 5.0, 1.0), ("b", 6.0, 0.9), ("c", 4.0, 2.0)):
        first.decide(key, 20, macs, loss)  # crossed both rungs at once: recorded at each
    peers = [(rung, loss, macs) for rung, points in first.records.items() for macs, loss in points]
    resumed, forgetful = DominanceStopper([10, 20], 2, 2, peers=peers), DominanceStopper([10, 20], 2, 2)
    assert first.decide("d", 10, macs=7.0, loss=1.5)  # dominated by a and b, three peers: stopped
    assert resumed.decide("d", 10, macs=7.0, loss=1.5)  # the same with the peers given
    assert not forgetful.decide("d", 10, macs=7.0, loss=1.5)  # a stopper that forgot them keeps it
    assert DominanceStopper([10], peers=[(30, 0.1, 1.0)]).records == {10: []}  # a rung it does not use: ignored


def test_dominance_stopper_margin_spares_near_ties():
    stopper = DominanceStopper([5], min_peers=1, min_dominators=1, margin=0.1)
    assert not stopper.decide("a", 5, macs=1.0, loss=1.0)
    assert not stopper.decide("b", 5, macs=2.0, loss=1.05)  # worse by less than the margin: kept
    assert stopper.decide("c", 5, macs=2.0, loss=1.2)  # worse by more: stopped


# ---- uniform pruning to a budget ----------------------------------------------------------------------------
@pytest.mark.parametrize("share", [0.3, 0.55, 0.8])
def test_uniform_to_budget_is_the_largest_uniform_config_within_it(share):
    teacher = TEACHERS["base"]
    budget = int(share * macs_of(CompressionConfig.identity(teacher), teacher) * 10)  # per 10 s
    config = uniform_to_budget(teacher, budget, seconds=10.0)
    cost = count_macs(config.student_architecture(teacher), seconds=10.0).total
    assert cost <= budget
    # The keep ratio it chose (heads are rounded, so read it from the FFN width) cannot grow by 1% and still fit.
    keep = config.ffn[0] / teacher.layers[0].ffn_dim
    bigger = uniform_config(teacher, min(1.0, keep + 0.01))
    assert count_macs(bigger.student_architecture(teacher), seconds=10.0).total > budget
    assert config.layers == list(range(teacher.num_layers))  # every layer kept: only widths shrink


def test_uniform_to_budget_edges():
    teacher = TEACHERS["tiny"]
    full = count_macs(teacher, seconds=10.0).total
    assert uniform_to_budget(teacher, full, 10.0).heads == [layer.heads for layer in teacher.layers]
    assert uniform_to_budget(teacher, 1000, 10.0) is None  # below even the thinnest uniform config


# ---- samplers ------------------------------------------------------------------------------------------------
def test_each_sampler_name_builds_its_sampler():
    expected = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
                "gp": optuna.samplers.GPSampler, "random": optuna.samplers.RandomSampler}
    assert set(expected) == set(SAMPLERS)
    for name, kind in expected.items():
        assert type(make_sampler(name, seed=3, trials=30)) is kind
    assert make_sampler("tpe", seed=0, trials=30, concurrency=4)._constant_liar  # parallel trials: no duplicates
    assert not make_sampler("tpe", seed=0, trials=30, concurrency=1)._constant_liar
    assert make_sampler("nsga2", seed=0, trials=30)._population_size == 10
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("cmaes", seed=0, trials=10)


def test_a_seeded_sampler_proposes_the_same_configs_again():
    space = SearchSpace.load("combined")

    def proposals(name):
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=make_sampler(name, 7, 10))
        configs = []
        for _ in range(4):
            trial = study.ask()
            configs.append(space.suggest(trial, TEACHERS["tiny"]).to_dict())
            study.tell(trial, [random.Random(trial.number).random(), 1.0])
        return configs

    for name in ("random", "tpe", "nsga2"):
        assert proposals(name) == proposals(name)
