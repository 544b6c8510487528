"""The mini-HuBERT fixture recipe (benchmarks/fixtures/build.py, issue 23): HuBERT Base's proportions.

Each MAC share (CNN, feature projection, positional conv, attention projections, attention scores, FFN) of the
committed recipe's shape at its `budget_seconds` is within 3 points of HuBERT Base's at 10 s, by sslc's analytic
count; the CNN's count is checked against torch's FlopCounterMode on the transformers model itself."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.fixtures.build import RECIPES, shape_of
from benchmarks.fixtures.pretrain import initial_model, teacher_config
from sslc.metrics import count_macs
from sslc.models.builders import PRESETS
from sslc.models.hf_import import config_from_hf

SHARES = ("cnn", "feature_projection", "positional_conv", "attention_projections", "attention_matmuls", "ffn")


def _shares(config, seconds: float) -> dict[str, float]:
    breakdown = count_macs(config, seconds=seconds)
    return {name: 100 * getattr(breakdown, name) / breakdown.total for name in SHARES}


def test_the_mini_recipe_has_hubert_bases_mac_shares_at_its_budget_seconds():
    recipe = RECIPES["mini"]
    shape = shape_of(recipe)
    mini = config_from_hf(teacher_config(**shape))
    assert mini.num_layers == 12 and mini.head_dim == 64
    base = PRESETS["hubert-base"]()
    assert [(c.kernel, c.stride) for c in mini.conv_layers] == [(c.kernel, c.stride) for c in base.conv_layers]
    ours, hubert = _shares(mini, recipe["budget_seconds"]), _shares(base, 10.0)
    assert sum(ours.values()) == pytest.approx(100.0, abs=1e-6)  # the six parts are all of its MACs
    for name in SHARES:
        assert abs(ours[name] - hubert[name]) <= 3.0, (name, ours[name], hubert[name])


def test_the_analytic_cnn_count_is_torchs_on_the_mini_model():
    recipe = RECIPES["mini"]
    model = initial_model(**shape_of(recipe)).eval()
    samples = int(recipe["budget_seconds"] * 16000)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.feature_extractor(torch.zeros(1, samples))
    analytic = count_macs(config_from_hf(model.config), seconds=recipe["budget_seconds"]).cnn
    assert counter.get_total_flops() / 2 == pytest.approx(analytic, rel=1e-3)


def test_the_committed_mini_teacher_is_the_recipes_and_loads_as_fp32():
    from benchmarks.fixtures.build import _committed
    from sslc import load_teacher

    path = _committed("mini", RECIPES["mini"])
    assert path is not None, "teachers/mini/recipe.json must record the mini recipe's current settings"
    teacher = load_teacher(str(path))
    expected = config_from_hf(teacher_config(**shape_of(RECIPES["mini"])))
    assert teacher.config.num_layers == expected.num_layers and teacher.config.embed_dim == expected.embed_dim
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
    assert all(torch.isfinite(p).all() for p in teacher.parameters())
