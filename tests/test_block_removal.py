"""DPHuBERT's block removal: 0 heads / 0 FFN units drop a layer's attention / FFN block.

References: transformers' own forward pass with the removed block's output projection zeroed (a block that adds
nothing to the residual), FlopCounterMode on the built student and on the teacher's remaining modules, and the
teacher's parameters minus those of the removed modules.
"""

from __future__ import annotations

import copy

import optuna
import pytest
import torch
from builders import pre_ln_tiny, random_teacher

from sslc.compress import CompressionConfig, compress
from sslc.compress.config import ConfigError
from sslc.metrics import count_macs, count_macs_of_model, count_params
from sslc.metrics.macs import count_macs_by_module
from sslc.metrics.params import count_params_from_config
from sslc.models import PRESETS, EncoderConfig, LayerSpec, tiny_config
from sslc.models.teachers import load_teacher
from sslc.runs.student_file import load_student, save_student
from sslc.spaces import SearchSpace
from tests.test_teachers import audio, make_hf_model, max_diff

SAMPLES = 16000
pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors:UserWarning")


def _removal(spec: EncoderConfig, attention: list[int], ffn: list[int]) -> CompressionConfig:
    config = CompressionConfig.identity(spec)
    for i in attention:
        config.heads[i] = 0
    for i in ffn:
        config.ffn[i] = 0
    return config


@pytest.mark.parametrize("family, layout", [("hubert", "base"), ("hubert", "large"), ("wavlm", "base")])
def test_removed_blocks_equal_zeroed_blocks_in_transformers(family, layout):
    """Layer 0 without attention, layer 1 without FFN: transformers' model with those blocks' output projections
    zeroed (post-LN: both LayerNorms still applied; pre-LN: the block's input norm has no effect)."""
    hf = make_hf_model(family, layout, seed=3)
    student = compress(load_teacher(hf), _removal(load_teacher(hf).config, attention=[0], ffn=[1]))
    assert student.layers[0].attention is None and student.layers[1].feed_forward is None
    reference = copy.deepcopy(hf.base_model)
    with torch.no_grad():
        for linear in (reference.encoder.layers[0].attention.out_proj,
                       reference.encoder.layers[1].feed_forward.output_dense):
            linear.weight.zero_()
            linear.bias.zero_()
    wave = audio(1, SAMPLES, seed=5)
    with torch.no_grad():
        expected = reference(wave, output_hidden_states=True)
        got = student(wave)
    assert len(got.hidden_states) == len(expected.hidden_states) == 3
    for a, b in zip(got.hidden_states, expected.hidden_states):
        assert max_diff(a, b) < 1e-4
    assert max_diff(got.last_hidden_state, expected.last_hidden_state) < 1e-4


@pytest.mark.parametrize("layout", ["tiny", "tiny-wavlm", "pre-ln"])
def test_block_removal_costs_match_flop_counter_and_the_teachers_remaining_modules(layout):
    teacher = random_teacher(pre_ln_tiny() if layout == "pre-ln" else PRESETS[layout]())
    config = _removal(teacher.config, attention=[1], ffn=[0])
    config.heads[0], config.ffn[1] = 2, 50  # removal beside ordinary pruning
    student = compress(teacher, config)
    architecture = config.student_architecture(teacher.config)
    # MACs: the analytic count, FlopCounterMode on the student.
    assert count_macs(architecture, num_samples=SAMPLES).total == count_macs_of_model(student, SAMPLES)
    # Removal alone saves exactly what the removed modules cost in the teacher under FlopCounterMode.
    removal_only = compress(teacher, _removal(teacher.config, attention=[1], ffn=[0]))
    by_module = count_macs_by_module(teacher, SAMPLES)
    removed_macs = by_module["layers.1.attention"] + by_module["layers.0.feed_forward"]
    assert count_macs_of_model(removal_only, SAMPLES) == by_module[""] - removed_macs
    # Parameters: the analytic count, the built student, and the teacher less the removed modules (pre-LN: and
    # the removed block's input LayerNorm).
    assert count_params_from_config(architecture) == count_params(student)
    removed = [teacher.layers[1].attention, teacher.layers[0].feed_forward]
    if teacher.config.layer_norm_first:
        removed += [teacher.layers[1].layer_norm, teacher.layers[0].final_layer_norm]
    assert count_params(removal_only) == count_params(teacher) - sum(count_params(m) for m in removed)
    keys = set(removal_only.state_dict())
    assert not any(k.startswith(("layers.1.attention.", "layers.0.feed_forward.")) for k in keys)
    assert ("layers.1.layer_norm.weight" in keys) == (not teacher.config.layer_norm_first)


def test_a_student_with_removed_blocks_saves_and_loads(tmp_path):
    teacher = random_teacher(PRESETS["tiny-wavlm"]())
    config = _removal(teacher.config, attention=[0], ffn=[0, 1])
    student = compress(teacher, config)
    path = save_student(tmp_path / "student.pt", student, config.to_dict(), "random:tiny-wavlm")
    loaded = load_student(path)
    wave = audio(2, SAMPLES, seed=1)
    with torch.no_grad():
        assert max_diff(loaded(wave)[-1], student(wave).hidden_states[-1]) == 0.0
    assert loaded.config.layers[0].heads == 0 and loaded.config.layers[1].ffn_dim == 0
    assert CompressionConfig.from_dict(loaded.metadata["compression"]) == config


def test_spaces_reach_removed_blocks():
    teacher = tiny_config()
    space = SearchSpace.from_dict({"heads": {"min": 0, "max": "all"}, "ffn_keep": {"min": 0.0, "max": 1.0,
                                                                                    "step": 0.25}})
    trial = optuna.trial.FixedTrial({"heads_0": 0, "heads_1": 3, "ffn_keep_0": 0.5, "ffn_keep_1": 0.0})
    config = space.suggest(trial, teacher)
    assert config.heads == [0, 3] and config.ffn == [teacher.layers[0].ffn_dim // 2, 0]
    config.validate(teacher)
    smallest = space.smallest(teacher)
    assert smallest.heads == [0, 0] and smallest.ffn == [0, 0]
    assert count_macs(smallest.student_architecture(teacher)).attention_projections == 0
    prune_only = SearchSpace.load("prune-only")
    assert prune_only.smallest(teacher).heads == [0] * teacher.num_layers


def test_ranks_of_a_removed_block_are_refused():
    teacher = tiny_config()
    config = _removal(teacher, attention=[0], ffn=[1])
    config.attn_rank[0], config.ffn_rank[1] = 4, 4
    with pytest.raises(ConfigError) as caught:
        config.validate(teacher)
    message = str(caught.value)
    assert "layer 0: attn_rank must be null where the block is removed" in message
    assert "layer 1: ffn_rank must be null where the block is removed" in message and "\n" not in message
    with pytest.raises(ValueError, match="a rank for q, whose block is removed"):
        EncoderConfig.from_dict({**teacher.to_dict(), "layers": [LayerSpec(0, 64, {"q": 2}).__dict__]})
