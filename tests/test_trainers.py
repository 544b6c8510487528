"""Tests for sslc.trainers: layer maps, the teacher-target cache, short trials and resumable full training."""

from __future__ import annotations

import copy
import dataclasses
import math
import threading

import numpy as np
import pytest
import torch
from builders import sine_segments

import sslc.trainers.cache as target_cache
from sslc.compress import CompressionConfig, compress
from sslc.errors import UserError
from sslc.models import PRESETS, build_encoder
from sslc.trainers import (
    LiveTeacherTargets,
    TeacherTargets,
    TrainerConfig,
    default_layer_map,
    default_targets,
    parse_targets,
    resolve_layer_map,
    run_short_trial,
    score_student,
    train_full,
)
from sslc.trainers.cache import layer_dir_name

CROP = 1.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def teacher():
    return build_encoder(PRESETS["tiny"](), seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(train, heldout) segments of 7 generated files of noise + sines, cropped to 1 s."""
    return sine_segments(tmp_path_factory.mktemp("corpus"), CROP)


def small_student(layers: int = 1, seed: int = 1):
    config = PRESETS["tiny"]()
    config.layers = config.layers[:layers]
    return build_encoder(config, seed=seed)


def trial_config(**overrides) -> TrainerConfig:
    settings = dict(steps=6, batch_size=2, lr=1e-3, log_every=2, crop_seconds=CROP, device="cpu")
    return TrainerConfig(**{**settings, **overrides})


# ---- configuration and layer maps -------------------------------------------------------------------------------
def test_layer_maps_have_one_pair_per_target_whatever_the_depth():
    assert default_targets(12) == [4, 8, 12] and default_targets(2) == [1, 2] and default_targets(24) == [8, 16, 24]
    # Each target is predicted by the student layer whose teacher origin is the deepest at or below it.
    assert default_layer_map(list(range(12)), 12) == [(4, 4), (8, 8), (12, 12)]  # identity: each from its own layer
    assert default_layer_map([1, 3], 12) == [(2, 4), (2, 8), (2, 12)]  # a shallow student: all from its last
    assert default_layer_map([3, 7, 11], 12) == [(1, 4), (2, 8), (3, 12)]
    assert default_layer_map([5, 6], 12) == [(0, 4), (2, 8), (2, 12)]  # below every kept layer: the CNN features
    assert default_layer_map([0, 1], 2) == [(1, 1), (2, 2)]
    assert default_layer_map([1, 3], 12, targets=[2, 12]) == [(1, 2), (2, 12)]
    for kept in ([0, 1], [0, 5, 11], list(range(12)), [11]):  # same targets, same number of terms
        assert [t for _, t in default_layer_map(kept, 12)] == [4, 8, 12]
    with pytest.raises(UserError):
        default_layer_map([12], 12)
    # Unknown origin: evenly spread teacher layers.
    assert resolve_layer_map(None, None, 3, 12) == [(1, 4), (2, 8), (3, 12)]
    assert resolve_layer_map([[2, 5]], None, 3, 12) == [(2, 5)]
    with pytest.raises(UserError):
        resolve_layer_map([[4, 5]], None, 3, 12)
    with pytest.raises(UserError):
        resolve_layer_map(None, [0, 1], 3, 12)
    with pytest.raises(UserError, match="twice"):
        resolve_layer_map([[1, 5], [2, 5]], None, 3, 12)


def test_parse_targets():
    assert parse_targets("default", 12) == [4, 8, 12] and parse_targets(None, 12) == [4, 8, 12]
    assert parse_targets("all", 3) == [1, 2, 3]
    assert parse_targets("12, 4,8", 12) == [4, 8, 12] and parse_targets([3], 12) == [3]
    assert parse_targets("4,8") == [4, 8] and parse_targets("all") == "all"  # syntax only, before the teacher
    for bad in ("", "4,,8", "four", "0,4", "4,4", "4,13"):
        if bad == "":
            assert parse_targets(bad, 12) == [4, 8, 12]  # empty means the default
            continue
        with pytest.raises(UserError):
            parse_targets(bad, 12)
    with pytest.raises(UserError, match="empty"):
        parse_targets([], 12)


def test_trainer_config_round_trip_and_validation():
    config = trial_config(layer_map=[[1, 2]], epochs=3)
    assert TrainerConfig.from_json(config.to_json()) == config
    with pytest.raises(UserError, match="steps"):
        TrainerConfig(steps=0).validate()
    with pytest.raises(UserError, match="unknown"):
        TrainerConfig.from_dict({"stepz": 3})


# ---- teacher targets ----------------------------------------------------------------------------------------------
def test_cached_targets_equal_fresh_ones_and_are_reused(tmp_path, teacher, data, spy):
    builds = spy(target_cache, "_build")  # one call per time the teacher fills a cache
    train, heldout = data
    targets = TeacherTargets(teacher, tmp_path / "cache", crop_seconds=CROP)
    before = len(builds)
    source = targets.source(train, [1, 2])
    assert len(builds) == before + 1
    live = LiveTeacherTargets(teacher, train, [1, 2])
    for i in range(len(train)):
        with torch.no_grad():
            fresh = teacher(torch.from_numpy(train[i])[None]).hidden_states
        cached = source.get([i])
        assert cached.frame_mask.all()
        live_batch = live.get([i])
        for j, layer in enumerate([1, 2]):
            torch.testing.assert_close(cached.hidden[j], fresh[layer], atol=2e-3, rtol=2e-3)  # fp16 storage
            torch.testing.assert_close(live_batch.hidden[j], fresh[layer])

    # Two trials, the second from a new TeacherTargets (as another process would): only the first computes.
    first = run_short_trial(small_student(), targets, train, heldout, trial_config(steps=2), kept_layers=[1])
    after_first = len(builds)
    assert after_first == before + 2  # the held-out set is new; the train set at layer 2 was built above
    again = TeacherTargets(teacher, tmp_path / "cache", crop_seconds=CROP)
    second = run_short_trial(small_student(), again, train, heldout, trial_config(steps=2), kept_layers=[1])
    assert len(builds) == after_first
    assert first.status == second.status == "completed"
    assert first.heldout_loss == pytest.approx(second.heldout_loss, rel=1e-6)


def test_cache_key_changes_with_crop_and_layers(tmp_path, teacher, data, spy):
    builds = spy(target_cache, "_build")  # one call per time the teacher fills a cache
    train, _ = data
    root = tmp_path / "cache"
    targets = TeacherTargets(teacher, root, crop_seconds=CROP)
    start = len(builds)
    targets.source(train, [1])
    targets.source(train, [2])  # a new layer: computed
    assert len(builds) == start + 2
    TeacherTargets(teacher, root, crop_seconds=CROP).source(train, [1, 2])  # both on disk now
    assert len(builds) == start + 2
    TeacherTargets(teacher, root, crop_seconds=0.5).source(train, [1])  # another crop: another key
    assert len(builds) == start + 3
    changed = copy.deepcopy(teacher)
    with torch.no_grad():
        changed.layers[0].feed_forward.fc1.bias.add_(0.1)
    TeacherTargets(changed, root, crop_seconds=CROP).source(train, [1])  # other weights: another key
    assert len(builds) == start + 4


def test_half_written_cache_is_ignored_and_rebuilt(tmp_path, teacher, data, spy):
    builds = spy(target_cache, "_build")  # one call per time the teacher fills a cache
    train, _ = data
    targets = TeacherTargets(teacher, tmp_path / "cache", crop_seconds=CROP)
    torn = tmp_path / "cache" / targets.cache_key(train) / layer_dir_name(2)
    torn.mkdir(parents=True)
    np.save(torn / "frames.npy", np.zeros(len(train), dtype=np.int64))  # a writer died here: no marker
    (torn / "targets.npy").write_bytes(b"garbage")
    start = len(builds)
    source = targets.source(train, [2])
    assert len(builds) == start + 1
    with torch.no_grad():
        fresh = teacher(torch.from_numpy(train[0])[None]).hidden_states[2]
    torch.testing.assert_close(source.get([0]).hidden[0], fresh, atol=2e-3, rtol=2e-3)


def test_concurrent_users_build_the_cache_once(tmp_path, teacher, data, spy):
    builds = spy(target_cache, "_build")  # one call per time the teacher fills a cache
    train, _ = data
    start = len(builds)
    errors = []

    def use():
        try:
            TeacherTargets(teacher, tmp_path / "cache", crop_seconds=CROP).source(train, [1])
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    # flock locks belong to open file descriptions, so threads contend exactly as processes would.
    threads = [threading.Thread(target=use) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(builds) == start + 1


# ---- short trials -----------------------------------------------------------------------------------------------
def test_identity_student_scores_zero_on_every_target(tmp_path, teacher, data):
    train, heldout = data
    targets = TeacherTargets(teacher, tmp_path / "cache", crop_seconds=CROP)
    identity = CompressionConfig.identity(teacher.config)  # the student `compress` builds when nothing is cut
    config = trial_config(targets=[1, 2])
    # Before any training step: the held-out targets are exact, so a copy of the teacher scores ~0 per target.
    score, by_target = score_student(compress(teacher, identity), targets, heldout, config, identity.layers)
    assert set(by_target) == {"1", "2"} and all(loss < 1e-4 for loss in by_target.values()), by_target
    assert score == pytest.approx(sum(by_target.values()) / 2)
    # Training starts there too (fp16 training targets: near 0, not exactly).
    student = compress(teacher, identity)
    result = run_short_trial(student, targets, train, heldout, trial_config(steps=1, log_every=1, lr=1e-6,
                             targets=[1, 2]), kept_layers=identity.layers)
    assert result.layer_map == [(1, 1), (2, 2)]
    assert result.curve[0][1] == pytest.approx(0.0, abs=5e-3)
    assert result.heldout_loss == pytest.approx(0.0, abs=5e-3)


def test_students_of_any_depth_are_scored_on_the_same_targets(tmp_path, data):
    """The score has one term per protocol target, whatever the student keeps, and is their mean."""
    train, heldout = data
    config = PRESETS["tiny"]()
    config.layers = [config.layers[0]] * 6
    deep_teacher = build_encoder(config, seed=3)
    targets = TeacherTargets(deep_teacher, tmp_path / "cache", crop_seconds=CROP)
    results = {}
    for depth in (1, 3, 6):
        student = build_encoder(dataclasses.replace(config, layers=config.layers[:depth]), seed=4)
        kept = list(range(depth))
        results[depth] = run_short_trial(student, targets, train, heldout, trial_config(steps=2), kept_layers=kept)
    for result in results.values():
        assert [t for _, t in result.layer_map] == default_targets(6) == [2, 4, 6]
        assert list(result.heldout_loss_by_target) == ["2", "4", "6"]
        mean = sum(result.heldout_loss_by_target.values()) / 3
        assert result.heldout_loss == pytest.approx(mean, rel=1e-12)
    assert results[1].layer_map == [(1, 2), (1, 4), (1, 6)]
    assert results[3].layer_map == [(2, 2), (3, 4), (3, 6)]


def test_loss_decreases_over_a_short_run(tmp_path, teacher, data):
    train, heldout = data
    targets = TeacherTargets(teacher, tmp_path / "cache", crop_seconds=CROP)
    config = trial_config(steps=30, log_every=5, lr=2e-3, warmup_fraction=0.0)
    result = run_short_trial(small_student(), targets, train, heldout, config, kept_layers=[1])
    assert result.status == "completed" and result.steps_done == 30
    losses = [loss for _, loss in result.curve]
    assert losses[-1] < 0.8 * losses[0], losses
    assert math.isfinite(result.heldout_loss) and result.seconds_training > 0


def test_on_report_every_k_steps_and_early_stop(teacher, data):
    train, heldout = data
    targets = TeacherTargets(teacher)  # live targets: no cache needed here
    calls = []
    result = run_short_trial(
        small_student(), targets, train, heldout, trial_config(steps=7, log_every=3),
        on_report=lambda step, loss: calls.append((step, loss)) and False,
    )
    assert [step for step, _ in calls] == [3, 6, 7] and result.curve == calls
    assert result.status == "completed"

    student = small_student()
    stopped = run_short_trial(
        student, targets, train, heldout, trial_config(steps=7, log_every=3),
        on_report=lambda step, loss: step >= 3,
    )
    assert (stopped.status, stopped.steps_done, stopped.heldout_loss) == ("stopped", 3, None)
    assert all(p.grad is None for p in student.parameters())  # a finished trial leaves no gradients behind


def test_nonfinite_loss_stops_the_run(teacher, data):
    train, heldout = data
    student = small_student()
    with torch.no_grad():
        student.layers[0].feed_forward.fc1.weight[0, 0] = float("nan")
    result = run_short_trial(student, TeacherTargets(teacher), train, heldout, trial_config(), kept_layers=[1])
    assert result.status == "nonfinite" and result.steps_done == 0
    assert result.heldout_loss is None and "nan" in result.reason


# ---- full training --------------------------------------------------------------------------------------------
class Interrupted(Exception):
    pass


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, teacher, data):
    train, heldout = data
    targets = TeacherTargets(teacher, tmp_path / "cache", crop_seconds=CROP)
    config = trial_config(steps=6, log_every=1, checkpoint_every=2, warmup_fraction=0.3)

    straight = small_student()
    reference = train_full(straight, targets, train, heldout, config, tmp_path / "a", progress=False)

    def crash_at_5(step, loss):
        if step == 5:  # after the checkpoint at step 4: steps 5.. are redone on resume
            raise Interrupted

    with pytest.raises(Interrupted):
        train_full(small_student(), targets, train, heldout, config, tmp_path / "b", False, crash_at_5)
    resumed_student = small_student()
    resumed = train_full(resumed_student, targets, train, heldout, config, tmp_path / "b", progress=False)

    assert resumed.resumed_from_step == 4 and resumed.steps_done == 6
    for (name, a), b in zip(straight.state_dict().items(), resumed_student.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.curve == reference.curve and resumed.heldout_loss == reference.heldout_loss

    # A finished run resumes to itself; changed optimisation settings are refused.
    again = train_full(small_student(), targets, train, heldout, config, tmp_path / "b", progress=False)
    assert again.steps_done == 6 and again.heldout_loss == reference.heldout_loss
    with pytest.raises(UserError, match="lr"):
        train_full(small_student(), targets, train, heldout, trial_config(lr=0.1), tmp_path / "b", progress=False)


def test_a_thin_students_heads_start_by_placing_its_channels_back():
    """Heads of a thin student start as the scatter onto the teacher channels it kept (pruned ones predicted as
    zero): on the teacher's own states restricted to the kept channels, the prediction is those states there."""
    from sslc.trainers.heads import PredictionHeads

    teacher = build_encoder(PRESETS["tiny"](), seed=0).eval()
    config = CompressionConfig.identity(teacher.config)
    config.hidden = 40
    student = compress(teacher, config)
    kept = student.config.residual_index
    assert len(kept) == 40 and sorted(set(kept)) == kept
    heads = PredictionHeads([(1, 1), (2, 2)], 40, 64, kept)
    states = torch.randn(2, 7, 64)
    predicted = heads([None, states[..., kept], states[..., kept]])
    expected = torch.zeros_like(states)
    expected[..., kept] = states[..., kept]
    assert all(torch.equal(p, expected) for p in predicted)


def test_fit_heads_recovers_a_linear_map():
    """fit_heads_ finds the least-squares map: checked against a known one."""
    from sslc.trainers.heads import PredictionHeads, fit_heads_

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=generator)
    true_weight, true_bias = torch.randn(9, 6, generator=generator), torch.randn(9, generator=generator)
    heads = PredictionHeads([(1, 1)], 6, 9)
    y = x @ true_weight.T + true_bias
    assert fit_heads_(heads, ([x[:400]], [y[:400]]), ([x[400:]], [y[400:]]), ridges=(1e-12,)) == [1e-12]
    assert torch.allclose(heads.heads[0].weight, true_weight, atol=1e-4)
    assert torch.allclose(heads.heads[0].bias, true_bias, atol=1e-4)


def test_a_thin_students_first_training_step_starts_from_fitted_heads(tmp_path, teacher, data, monkeypatch):
    """At a negligible learning rate the first reported training loss is the start's: with the fitted heads a
    thin student starts below where its placement heads (pruned channels predicted as zero) would."""
    import sslc.trainers.distill as distill_module

    train, heldout = data
    targets = TeacherTargets(teacher, tmp_path / "cache", crop_seconds=CROP)
    config = CompressionConfig.identity(teacher.config)
    config.hidden = 32
    settings = trial_config(steps=1, log_every=1, lr=1e-9, targets=[1, 2])
    fitted = run_short_trial(compress(teacher, config), targets, train, heldout, settings, kept_layers=config.layers)
    monkeypatch.setattr(distill_module, "_fit_heads", lambda *args: None)  # the placement start, to compare
    placed = run_short_trial(compress(teacher, config), targets, train, heldout, settings, kept_layers=config.layers)
    assert fitted.curve[0][1] < placed.curve[0][1]
    assert fitted.heldout_loss < placed.heldout_loss
