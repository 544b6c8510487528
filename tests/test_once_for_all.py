"""Tests for once-for-all distillation (sslc.trainers.once_for_all): the sandwich rule, exact resumes, and scores
of sub-networks on the shared weights that agree with `score_student` on the students they stand for."""

from __future__ import annotations

import random

import pytest
import torch
from builders import sine_segments

from sslc.compress import CompressionConfig, compress
from sslc.compress.config import ConfigError
from sslc.compress.elastic import make_elastic
from sslc.errors import UserError
from sslc.models import PRESETS, build_encoder
from sslc.trainers import (
    SharedHeads,
    TeacherTargets,
    TrainerConfig,
    load_once_for_all,
    make_shared_heads,
    score_student,
    score_subnetwork,
    train_once_for_all,
)
from sslc.trainers.distill import Scorer, _fit_heads, _targets_for

CROP = 1.0
TOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher():
    return build_encoder(PRESETS["tiny"](), seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(train, heldout) segments of 7 generated files of noise + sines, cropped to 1 s."""
    return sine_segments(tmp_path_factory.mktemp("corpus"), CROP)


@pytest.fixture(scope="module")
def targets(teacher, tmp_path_factory):
    return TeacherTargets(teacher, tmp_path_factory.mktemp("cache"), crop_seconds=CROP)


def trainer_config(**overrides) -> TrainerConfig:
    settings = dict(steps=6, batch_size=2, lr=2e-3, log_every=1, checkpoint_every=2, crop_seconds=CROP, device="cpu")
    return TrainerConfig(**{**settings, **overrides})


def extremes(elastic):
    """(smallest, largest) sub-networks of the tiny elastic student."""
    smallest = elastic.config_for(depth=1, heads=1, ffn=16, conv_channels=[8] * 7, hidden=16)
    return smallest, elastic.config_for()


def sampler(elastic):
    """A config sampler drawing every size uniformly from the rng it is given (as `SearchSpace.sample` does)."""
    spec = elastic.config

    def sample(rng: random.Random):
        depth = rng.randint(1, spec.num_layers)
        return elastic.config_for(
            depth=depth,
            heads=[rng.randint(1, spec.layers[i].heads) for i in range(depth)],
            ffn=[rng.randint(1, spec.layers[i].ffn_dim) for i in range(depth)],
            conv_channels=[rng.randint(1, conv.channels) for conv in spec.conv_layers],
            hidden=rng.randrange(spec.pos_conv_groups, spec.embed_dim + 1, spec.pos_conv_groups),
        )

    return sample


def train(teacher, targets, data, checkpoint_dir, config=None, **kwargs):
    elastic = make_elastic(teacher)
    smallest, largest = extremes(elastic)
    train_data, heldout = data
    result = train_once_for_all(elastic, targets, train_data, heldout, config or trainer_config(), checkpoint_dir,
                                sampler(elastic), smallest, largest, progress=False, **kwargs)
    return elastic, result


@pytest.fixture(scope="module")
def straight(teacher, targets, data, tmp_path_factory):
    """An uninterrupted 6-step run: (elastic, result, checkpoint dir)."""
    directory = tmp_path_factory.mktemp("straight")
    elastic, result = train(teacher, targets, data, directory)
    return elastic, result, directory


# ---- scores on the shared weights -----------------------------------------------------------------------------
def test_subnetwork_scores_agree_with_score_student(teacher, targets, data):
    _, heldout = data
    config = trainer_config()
    elastic = make_elastic(teacher)
    heads = make_shared_heads(elastic, targets, config)
    assert isinstance(heads, SharedHeads) and heads.targets == [1, 2]

    # The whole model is the teacher, with identity heads: it scores 0.
    whole, _ = score_subnetwork(elastic, heads, None, targets, heldout, config)
    assert abs(whole) <= TOL

    # Full width: the compressed student with its own identity heads.
    full_width = elastic.config_for(depth=1, heads=2, ffn=40, conv_channels=[20] * 7)
    got, got_by_target = score_subnetwork(elastic, heads, full_width, targets, heldout, config)
    expected, expected_by_target = score_student(compress(teacher, full_width), targets, heldout, config,
                                                 kept_layers=full_width.layers)
    assert got > 0.01 and abs(got - expected) <= TOL
    assert got_by_target.keys() == expected_by_target.keys() == {"1", "2"}
    assert all(abs(got_by_target[k] - expected_by_target[k]) <= TOL for k in got_by_target)

    # Thin: the extracted student with heads that place its channels back (PredictionHeads(placement=...)).
    for thin in (extremes(elastic)[0], elastic.config_for(depth=2, heads=[3, 1], ffn=[100, 7], hidden=40)):
        student = elastic.extract(thin)
        assert student.config.residual_index == elastic.residual_index(thin)
        got, got_by_target = score_subnetwork(elastic, heads, thin, targets, heldout, config)
        expected, expected_by_target = score_student(student, targets, heldout, config, kept_layers=thin.layers)
        assert abs(got - expected) <= TOL
        assert all(abs(got_by_target[k] - expected_by_target[k]) <= TOL for k in got_by_target)

    # Scoring leaves the shared weights and heads untouched and in their mode.
    assert all(torch.equal(a, b) for a, b in zip(heads.state_dict().values(),
                                                  make_shared_heads(elastic, targets, config).state_dict().values()))
    with pytest.raises(UserError, match="layer_map"):
        score_subnetwork(elastic, heads, None, targets, heldout, trainer_config(layer_map=[[1, 1], [2, 2]]))


def test_subnetwork_scores_with_fitted_heads_are_the_extracted_students_with_a_trials_heads(teacher, targets, data):
    """`fit_heads_on` scores a sub-network as a trial starts: its own heads fitted on its first training batches."""
    train_data, heldout = data
    config = trainer_config()
    elastic = make_elastic(teacher)
    shared = make_shared_heads(elastic, targets, config)
    for thin in (extremes(elastic)[0], elastic.config_for(depth=2, heads=[3, 1], ffn=[100, 7], hidden=40)):
        got, _ = score_subnetwork(elastic, shared, thin, targets, heldout, config, fit_heads_on=train_data)
        # Recomputed on the ordinary extracted student, with the trainer's own head fit and scorer.
        student = elastic.extract(thin)
        scorer = Scorer.for_student(student, targets, heldout, config, thin.layers)
        _fit_heads(student, scorer.heads, scorer.layer_map, _targets_for(targets, train_data, scorer.layer_map),
                   train_data, config)
        expected, _ = scorer.score()
        assert abs(got - expected) <= TOL
        # Fitted heads predict a thin sub-network's pruned channels; the shared heads (untrained) cannot.
        assert got < score_subnetwork(elastic, shared, thin, targets, heldout, config)[0]


# ---- training -------------------------------------------------------------------------------------------------
def test_training_lowers_the_smallest_subnetworks_score(teacher, targets, data, straight):
    _, heldout = data
    fresh = make_elastic(teacher)
    smallest, _ = extremes(fresh)
    before, _ = score_subnetwork(fresh, make_shared_heads(fresh, targets, trainer_config()), smallest, targets,
                                 heldout, trainer_config())
    elastic, result, _ = straight
    assert result.status == "completed" and result.steps_done == 6 and result.seconds_training > 0
    assert [step for step, _ in result.curve] == [1, 2, 3, 4, 5, 6]
    assert result.smallest_loss < before
    assert result.largest_loss is not None and set(result.smallest_by_target) == {"1", "2"}


def test_every_step_trains_largest_smallest_and_sampled_configs(teacher, targets, data, tmp_path):
    elastic = make_elastic(teacher)
    smallest, largest = extremes(elastic)
    draw, drawn, rngs = sampler(elastic), [], []

    def spy_sampler(rng):
        rngs.append(rng)
        drawn.append(draw(rng))
        return drawn[-1]

    trained, forward = [], elastic.forward

    def spy_forward(waveforms, lengths=None, config=None):
        if elastic.training:  # held-out scoring runs in eval mode
            trained.append(config)
        return forward(waveforms, lengths, config=config)

    elastic.forward = spy_forward
    train_data, heldout = data
    result = train_once_for_all(elastic, targets, train_data, heldout, trainer_config(steps=3), None, spy_sampler,
                                smallest, largest, random_per_step=2, progress=False)
    assert result.status == "completed" and result.checkpoint is None
    assert len(trained) == 3 * 4 and len(drawn) == 3 * 2
    for step in range(3):
        group = trained[4 * step: 4 * step + 4]
        assert group[0] is largest and group[1] is smallest
        assert group[2] is drawn[2 * step] and group[3] is drawn[2 * step + 1]
    assert all(rng is rngs[0] for rng in rngs) and isinstance(rngs[0], random.Random)

    # A sampler that leaves the elastic student's sub-networks is refused, with the reason.
    with pytest.raises(ConfigError, match="sample_config.*first n layers"):
        train_once_for_all(elastic, targets, train_data, heldout, trainer_config(steps=1), None,
                           lambda rng: CompressionConfig.keep_layers(teacher.config, [1]), smallest, largest,
                           progress=False)


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(teacher, targets, data, straight, tmp_path):
    _, reference, reference_dir = straight
    stopped_elastic, stopped = train(teacher, targets, data, tmp_path, on_report=lambda step, loss: step == 3)
    assert stopped.status == "stopped" and stopped.steps_done == 3 and stopped.smallest_loss is None

    resumed_elastic, resumed = train(teacher, targets, data, tmp_path)
    assert resumed.resumed_from_step == 3 and resumed.steps_done == 6 and resumed.status == "completed"
    assert resumed.curve == reference.curve
    assert resumed.smallest_loss == reference.smallest_loss and resumed.largest_loss == reference.largest_loss

    expected, got = load_once_for_all(reference_dir), load_once_for_all(tmp_path)
    assert got.finished and got.step == 6
    for module in ("elastic", "heads"):
        a, b = getattr(expected, module).state_dict(), getattr(got, module).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), module

    # Changed settings are refused; a finished run resumes to itself.
    with pytest.raises(UserError, match="lr"):
        train(teacher, targets, data, tmp_path, config=trainer_config(lr=0.1))
    again_elastic, again = train(teacher, targets, data, tmp_path)
    assert again.steps_done == 6 and again.smallest_loss == reference.smallest_loss


def test_checkpoint_gives_back_the_trained_elastic_student_and_heads(targets, data, straight):
    elastic, result, directory = straight
    saved = load_once_for_all(directory)
    assert saved.config == trainer_config() and saved.total_steps == 6
    state = elastic.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.elastic.state_dict().items())
    _, heldout = data
    smallest, largest = extremes(saved.elastic)
    score, by_target = score_subnetwork(saved.elastic, saved.heads, smallest, targets, heldout, saved.config)
    assert score == result.smallest_loss and by_target == result.smallest_by_target
    # The trained weights are a valid anytime model: a sub-network extracts as an ordinary student.
    assert saved.elastic.extract(smallest).config.num_layers == 1
