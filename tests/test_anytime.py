"""Tests for anytime students: the elastic model (sslc.compress.elastic), its sub-networks, split execution and the
anytime file (sslc.runs.anytime_file, `sslc.load_student(path, budget=...)`).

The reference for every sub-network is `compress(teacher, config)` with the same importance criteria: the elastic
model must compute what the physically sliced student computes, and `extract` must build that very student.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from builders import pre_ln_tiny, random_teacher

import sslc
from sslc.compress import CompressionConfig, ConfigError, compress
from sslc.compress.elastic import ElasticStudent, make_elastic
from sslc.errors import UserError
from sslc.metrics import count_macs, count_macs_of_model
from sslc.metrics.macs import format_macs
from sslc.models import PRESETS
from sslc.runs.anytime_file import load_anytime, save_anytime
from sslc.runs.student_file import read_student_file, save_student

SAMPLES = 16000  # 1 s of audio
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")
LAYOUTS = {"tiny": PRESETS["tiny"], "tiny-wavlm": PRESETS["tiny-wavlm"], "pre-ln": pre_ln_tiny}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def pair(request, one_torch_thread):
    """(teacher, its elastic student with l1 orders)."""
    teacher = random_teacher(LAYOUTS[request.param]())
    return teacher, make_elastic(teacher)


@pytest.fixture(scope="module")
def batch():
    """Two utterances, the second one padded."""
    waveforms = torch.randn(2, SAMPLES, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([SAMPLES, 11000])
    waveforms[1, 11000:] = 0.0
    return waveforms, lengths


def outputs(model, batch, **kwargs):
    with torch.no_grad():
        return model(*batch, **kwargs)


def max_difference(a, b) -> float:
    assert len(a) == len(b)
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def random_choice(elastic, rng: random.Random, thin: bool) -> CompressionConfig:
    spec = elastic.config
    depth = rng.randint(1, spec.num_layers)
    groups = spec.pos_conv_groups
    return elastic.config_for(
        depth=depth,
        heads=[rng.randint(1, spec.layers[i].heads) for i in range(depth)],
        ffn=[rng.randint(1, spec.layers[i].ffn_dim) for i in range(depth)],
        conv_channels=[rng.randint(1, conv.channels) for conv in spec.conv_layers],
        hidden=rng.randrange(groups, spec.embed_dim, groups) if thin else None,
    )


# ---- sub-networks are the compressed students --------------------------------------------------------------------
def test_sub_networks_equal_the_compressed_students(pair, batch):
    teacher, elastic = pair
    rng = random.Random(teacher.config.family + str(teacher.config.layer_norm_first))
    for thin in (False, True, True, False, True):
        config = random_choice(elastic, rng, thin)
        student = compress(teacher, config)
        got, expected = outputs(elastic, batch, config=config), outputs(student, batch)
        assert max_difference(got.hidden_states, expected.hidden_states) <= TOL
        # Pre-LN's final LayerNorm over a few channels magnifies rounding: relative there.
        torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=TOL, rtol=1e-4)
        assert torch.equal(got.frame_lengths, expected.frame_lengths)
        # Channels are reported where the compressed student has them (its residual_index, ascending).
        assert elastic.residual_index(config) == student.config.residual_sources()
        assert (student.config.residual_index is not None) == thin
        # extract builds that very student: same config, same weights bit for bit.
        extracted = elastic.extract(config)
        assert extracted.config == student.config
        expected_state, got_state = student.state_dict(), extracted.state_dict()
        assert got_state.keys() == expected_state.keys()
        assert all(torch.equal(got_state[k], expected_state[k]) for k in expected_state)


def test_thin_sub_network_stream_holds_the_kept_teacher_channels(pair, batch):
    """The carried stream is in importance order: mapped through residual_order it is the compressed student's."""
    teacher, elastic = pair
    config = random_choice(elastic, random.Random(7), thin=True)
    student = compress(teacher, config)
    with torch.no_grad():
        split = elastic.run(*batch, until_layer=1, config=config)
        expected = student(*batch).hidden_states[1]
    position = {c: i for i, c in enumerate(student.config.residual_index)}
    columns = [position[c] for c in elastic.residual_order[: config.hidden].tolist()]
    assert float((split.stream - expected[..., columns]).abs().max()) <= TOL


def test_data_driven_orders_match_compress_with_data(batch):
    teacher = random_teacher(PRESETS["tiny-wavlm"]())
    generator = torch.Generator().manual_seed(2)
    data = [(torch.randn(2, SAMPLES, generator=generator), torch.tensor([SAMPLES, 12000])) for _ in range(2)]
    elastic = make_elastic(teacher, data=data)
    assert set(elastic.criteria.values()) == {"data"}
    l1 = make_elastic(teacher)
    assert any(not torch.equal(a, b) for a, b in zip(elastic.state_dict().values(), l1.state_dict().values()))
    config = random_choice(elastic, random.Random(3), thin=True)
    assert config.head_importance == config.ffn_importance == config.hidden_importance == "data"
    student = compress(teacher, config, data=data)
    assert max_difference(outputs(elastic, batch, config=config).hidden_states,
                          outputs(student, batch).hidden_states) <= TOL


def test_the_full_size_is_the_teacher(pair, batch):
    teacher, elastic = pair
    orders = elastic.orders()
    # The weights really are re-ordered (else equality with the teacher would prove nothing).
    assert not torch.equal(orders["residual"], torch.arange(teacher.config.embed_dim))
    assert any(not torch.equal(o, torch.arange(o.numel())) for o in orders["head"] + orders["ffn"] + orders["conv"])
    got, expected = outputs(elastic, batch), outputs(teacher, batch)
    assert max_difference(got.hidden_states, expected.hidden_states) <= TOL
    assert float((got.last_hidden_state - expected.last_hidden_state).abs().max()) <= TOL
    state = elastic.teacher_state()  # the layout round trip is exact
    assert all(torch.equal(state[k], v) for k, v in teacher.state_dict().items())


def test_a_smaller_size_is_a_prefix_of_a_larger_one(pair):
    teacher, elastic = pair
    spec = elastic.config
    rng = random.Random(5)
    storages = {p.untyped_storage().data_ptr(): p for p in elastic.weights.parameters()}
    # The elastic model holds exactly the teacher's weights (no extra copies per size).
    assert sum(p.numel() for p in elastic.parameters()) == sum(p.numel() for p in teacher.parameters())
    for _ in range(3):
        large = random_choice(elastic, rng, thin=True)
        depth = rng.randint(1, len(large.layers))
        small = elastic.config_for(
            depth=depth,
            heads=[rng.randint(1, h) for h in large.heads[:depth]],
            ffn=[rng.randint(1, f) for f in large.ffn[:depth]],
            conv_channels=[rng.randint(1, c) for c in large.conv_channels],
            hidden=rng.randrange(spec.pos_conv_groups, large.hidden + 1, spec.pos_conv_groups),
        )
        small_weights, large_weights = elastic.sub_state(small), elastic.sub_state(large)
        for key, tensor in small_weights.items():
            full = storages[tensor.untyped_storage().data_ptr()]  # a view of a shared parameter
            assert tensor.data_ptr() == full.data_ptr() == large_weights[key].data_ptr()
            prefix = large_weights[key][tuple(slice(0, n) for n in tensor.shape)]
            assert torch.equal(prefix, tensor)
        small_kept, large_kept = elastic.kept(small), elastic.kept(large)
        for kind in ("head", "ffn", "conv"):
            for a, b in zip(small_kept[kind], large_kept[kind]):
                assert set(a.tolist()) <= set(b.tolist())
        assert set(small_kept["residual"].tolist()) <= set(large_kept["residual"].tolist())


def test_configs_that_are_not_sub_networks_are_refused(pair):
    teacher, elastic = pair
    spec = teacher.config
    ranked = elastic.config_for(depth=2)
    ranked.attn_rank = [4, None]
    skipping = CompressionConfig.keep_layers(spec, [1])
    other_order = elastic.config_for(depth=2, heads=2)
    other_order.head_importance = "diagonal"
    sparse = elastic.config_for()
    sparse.sparsity = 0.5
    for config, words in ((ranked, "low-rank"), (skipping, "first n layers"), (other_order, "head_importance"),
                          (sparse, "sparsity")):
        with pytest.raises(ConfigError, match=words):
            elastic(torch.zeros(1, SAMPLES), config=config)
        with pytest.raises(ConfigError, match=words):
            elastic.extract(config)
    other_order.heads = [h.heads for h in spec.layers]  # nothing pruned: the criterion does not matter
    elastic.sizes(other_order)


# ---- split execution ---------------------------------------------------------------------------------------------
def test_split_execution_equals_the_full_forward(pair, batch):
    teacher, elastic = pair
    for config in (None, random_choice(elastic, random.Random(11), thin=True)):
        with torch.no_grad():
            full = elastic(*batch, config=config)
            depth = len(full.hidden_states) - 1
            for k in range(depth + 1):
                split = elastic.run(*batch, until_layer=k, config=config, keep_states=True)
                resumed = elastic.resume(split, from_layer=k, config=config)
                assert max_difference(resumed.hidden_states, full.hidden_states) == 0.0
                assert torch.equal(resumed.last_hidden_state, full.last_hidden_state)
                assert torch.equal(resumed.frame_lengths, full.frame_lengths)
                # What goes over the wire by default: the stream and the frame lengths only.
                light = elastic.run(*batch, until_layer=k, config=config)
                assert light.states is None and light.layer == k
                resumed = elastic.resume(light, config=config)
                assert max_difference(resumed.hidden_states, full.hidden_states[k:]) == 0.0
                assert torch.equal(resumed.last_hidden_state, full.last_hidden_state)
    with pytest.raises(ValueError, match="after layer"):
        elastic.resume(elastic.run(*batch, until_layer=1), from_layer=0)


def test_split_execution_of_an_ordinary_student(pair, batch):
    teacher, elastic = pair
    student = elastic.extract(random_choice(elastic, random.Random(13), thin=True))
    for model in (teacher, student):
        with torch.no_grad():
            full = model(*batch)
            for k in range(model.config.num_layers + 1):
                resumed = model.resume(model.run(*batch, until_layer=k, keep_states=True))
                assert max_difference(resumed.hidden_states, full.hidden_states) == 0.0
                assert torch.equal(resumed.last_hidden_state, full.last_hidden_state)
                resumed = model.resume(model.run(*batch, until_layer=k), from_layer=k)
                assert max_difference(resumed.hidden_states, full.hidden_states[k:]) == 0.0


# ---- the anytime file --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def anytime(tmp_path_factory, one_torch_thread):
    """(path, elastic, front points as saved): a tiny WavLM; scores mostly fall with MACs, but the second largest
    point scores worse than the third (so the largest point within a budget is not always the best)."""
    teacher = random_teacher(PRESETS["tiny-wavlm"]())
    elastic = make_elastic(teacher)
    rng = random.Random(17)
    configs = [random_choice(elastic, rng, thin=i % 2 == 1) for i in range(6)] + [elastic.config_for()]
    macs = [count_macs(config.student_architecture(teacher.config)).total for config in configs]
    rank = {i: r for r, i in enumerate(sorted(range(len(configs)), key=lambda i: macs[i]))}
    scores = [1.0 / (1 + rank[i]) if rank[i] != len(configs) - 2 else 0.9 for i in range(len(configs))]
    # MACs given for some points, counted by save_anytime for the others
    front = [(config, m if i % 2 else None, score) for i, (config, m, score) in enumerate(zip(configs, macs, scores))]
    path = save_anytime(tmp_path_factory.mktemp("anytime") / "anytime.pt", elastic, front, teacher="random:tiny-wavlm")
    return path, elastic, load_anytime(path).front


def expected_point(front, limit):
    fitting = [p for p in front if p.macs <= limit]
    return min(fitting, key=lambda p: p.score)


def test_load_student_with_a_budget_picks_the_best_point_within_it(anytime, batch):
    path, elastic, front = anytime
    by_macs = sorted(front, key=lambda p: p.macs)
    budgets = [(p.macs + q.macs) // 2 for p, q in zip(by_macs, by_macs[1:])] + [by_macs[-1].macs]
    chosen = set()
    for limit in budgets:
        student = sslc.load_student(path, budget=str(limit))  # the lazy top-level wrapper
        point = expected_point(front, limit)
        chosen.add(front.index(point))
        assert student.metadata["compression"] == point.config.to_dict()
        analytic = count_macs(student.config).total
        assert analytic == point.macs <= limit
        # The analytic count is what FlopCounterMode measures on the extracted student.
        assert count_macs(student.config, num_samples=SAMPLES).total == count_macs_of_model(student.encoder, SAMPLES)
        with torch.no_grad():
            got = student(*batch)
            expected = elastic(*batch, config=point.config).hidden_states
        assert max_difference(got, expected) <= TOL
    assert len(chosen) > 1  # the budgets exercised more than one choice
    largest_fitting = [max((p for p in front if p.macs <= limit), key=lambda p: p.macs) for limit in budgets]
    assert any(expected_point(front, limit) != largest for limit, largest in zip(budgets, largest_fitting))


def test_a_share_budget_is_of_the_teachers_macs(anytime):
    path, elastic, front = anytime
    teacher_macs = count_macs(elastic.config).total
    model = load_anytime(path)
    assert model.teacher_macs == teacher_macs
    share = 100 * sorted(p.macs for p in front)[1] / teacher_macs
    student = sslc.load_student(path, budget=f"{share:.4f}%")
    limit = int(share / 100 * teacher_macs)
    assert student.metadata["compression"] == expected_point(front, limit).config.to_dict()


def test_an_impossible_budget_names_the_smallest_point(anytime):
    path, elastic, front = anytime
    smallest = min(p.macs for p in front)
    with pytest.raises(UserError) as error:
        sslc.load_student(path, budget=str(smallest - 1))
    message = str(error.value)
    assert "\n" not in message and format_macs(smallest) in message


def test_anytime_model_runs_any_budget_and_splits(anytime, batch):
    path, elastic, front = anytime
    model = sslc.load_anytime(path)
    assert isinstance(model.elastic, ElasticStudent) and len(model.front) == len(front)
    point = model.point()
    assert point.score == min(p.score for p in front)
    with torch.no_grad():
        full = model(*batch)
        assert max_difference(full.hidden_states, elastic(*batch, config=point.config).hidden_states) == 0.0
        split = model.run(*batch, until_layer=1)
        assert torch.equal(model.resume(split).last_hidden_state, full.last_hidden_state)


def test_budgets_and_file_kinds_are_not_mixed_up(anytime, tmp_path, batch):
    path, elastic, front = anytime
    with pytest.raises(UserError, match="budget="):
        sslc.load_student(path)
    with pytest.raises(UserError, match="anytime"):
        read_student_file(path)
    config = front[0].config
    ordinary = save_student(tmp_path / "student.pt", elastic.extract(config), config.to_dict(), "random:tiny-wavlm")
    with pytest.raises(UserError, match="ordinary student file"):
        sslc.load_student(ordinary, budget="40%")
    student = sslc.load_student(ordinary)  # unchanged without a budget
    with torch.no_grad():
        assert max_difference(student(*batch), elastic(*batch, config=config).hidden_states) <= TOL


def test_front_points_are_checked(anytime, tmp_path):
    path, elastic, front = anytime
    config = front[0].config
    with pytest.raises(ValueError, match="analytic"):
        save_anytime(tmp_path / "bad.pt", elastic, [(config, front[0].macs + 1, 0.5)])
    ranked = dataclasses.replace(config, attn_rank=[1] * len(config.layers))
    with pytest.raises(ConfigError, match="low-rank"):
        save_anytime(tmp_path / "bad.pt", elastic, [(ranked, None, 0.5)])
