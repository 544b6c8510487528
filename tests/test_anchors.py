"""The anchor families scaled to a budget (`sslc.search.baselines.anchor_at_budget`, issue 23): each within 1% of
the budget by sslc's analytic MAC count, each by its own rule, a clear error where a family cannot get there."""

from __future__ import annotations

import pytest

from benchmarks.fixtures.pretrain import teacher_config
from sslc.errors import UserError
from sslc.metrics import count_macs
from sslc.models.builders import PRESETS
from sslc.models.hf_import import config_from_hf
from sslc.search.baselines import ANCHOR_FAMILIES, ANCHOR_TOLERANCE, anchor_at_budget, anchors_at_budget

BASE = PRESETS["hubert-base"]()
FIXTURE = config_from_hf(teacher_config(3, 192))  # the benchmarks' fixture teacher's shape
# (teacher, share of its MACs at 10 s, the families that cannot reach it): HuBERT Base's CNN alone is a third of
# its MACs, so below that only uniform pruning (which cuts the CNN too) gets there; two full-width layers are 44%.
CASES = [
    (BASE, 0.25, {"distilhubert-2layer", "lighthubert-small", "fithubert-like", "armhubert-s-like",
                  "starhubert-like"}),
    (BASE, 0.40, set()),
    (BASE, 0.55, {"distilhubert-2layer"}),
    (FIXTURE, 0.25, set()),
    (FIXTURE, 0.40, set()),
    (FIXTURE, 0.55, set()),
]


def _macs(config, teacher) -> int:
    return count_macs(config.student_architecture(teacher), seconds=10.0).total


@pytest.mark.parametrize("teacher, share, unreachable", CASES,
                         ids=[f"{'base' if t is BASE else 'fixture'}-{s:.0%}" for t, s, _ in CASES])
def test_every_family_lands_within_one_percent_of_the_budget_or_says_why_not(teacher, share, unreachable):
    budget = int(share * count_macs(teacher, seconds=10.0).total)
    configs, reasons = anchors_at_budget(teacher, budget, 10.0)
    assert set(reasons) == unreachable
    assert set(configs) == set(ANCHOR_FAMILIES) - unreachable
    for name, config in configs.items():
        assert (1 - ANCHOR_TOLERANCE) * budget <= _macs(config, teacher) <= budget, name
    for name, reason in reasons.items():
        assert reason.startswith(f"the {name} anchor cannot reach") and "\n" not in reason


@pytest.mark.parametrize("teacher", [BASE, FIXTURE], ids=["base", "fixture"])
def test_each_family_keeps_its_rule_at_the_budget(teacher):
    budget = int(0.4 * count_macs(teacher, seconds=10.0).total)
    configs, _ = anchors_at_budget(teacher, budget, 10.0)
    depth = teacher.num_layers
    assert len(configs["distilhubert-2layer"].layers) == 2
    for name in ("lighthubert-small", "fithubert-like", "armhubert-s-like", "starhubert-like"):
        config = configs[name]
        assert len(config.layers) == depth and config.conv_channels == [c.channels for c in teacher.conv_layers]
        assert len(set(config.ffn)) == 1 and len(set(config.heads)) == 1  # the same shape in every layer
    uniform = configs["uniform"]
    assert len(uniform.layers) == depth and uniform.hidden is None  # widths cut, not depth or the residual


@pytest.mark.parametrize("name, width, heads, ffn", [
    ("armhubert-s-like", 432, 7, 816), ("starhubert-like", 432, 8, 976), ("lighthubert-small", 384, 6, 1536),
    ("fithubert-like", 480, 8, 480),
])
def test_at_a_published_shapes_own_macs_the_family_gives_that_shape(name, width, heads, ffn):
    """The published shapes on HuBERT Base (RESEARCH.md: ARMHuBERT-S 12 x 432, FFN 816; STaRHuBERT 12 x 432,
    8 heads, FFN 976; LightHuBERT Small 12 x 384, 6 heads, FFN 1536; FitHuBERT 12 x 480, FFN 480)."""
    published = ANCHOR_FAMILIES[name].at_width(BASE, width)
    assert published.hidden == width and published.heads == [heads] * 12 and published.ffn == [ffn] * 12
    assert anchor_at_budget(name, BASE, _macs(published, BASE), 10.0).to_dict() == published.to_dict()


def test_a_family_that_cannot_reach_the_budget_is_a_user_error_naming_its_range():
    budget = int(0.2 * count_macs(BASE, seconds=10.0).total)
    with pytest.raises(UserError, match=r"the fithubert-like anchor cannot reach 14\.81 GMACs: its shapes cost 2[0-9.]+ GMACs to 74.07 GMACs"):
        anchor_at_budget("fithubert-like", BASE, budget, 10.0)
    with pytest.raises(UserError, match=r"the distilhubert-2layer anchor cannot reach 74\.07 GMACs: its shapes cost .* to 34.92 GMACs"):
        anchor_at_budget("distilhubert-2layer", BASE, count_macs(BASE, seconds=10.0).total, 10.0)


def test_a_search_starts_from_every_family_at_the_budget_or_its_published_shape():
    """The warm start (what `run_search` asks first) is each family's shape at the budget where the family
    reaches it, and its published shape (for the searcher to narrow) where it does not: at 55% of HuBERT Base,
    DistilHuBERT's two full-width layers cost less than the budget, every other family fills it. Then each thin
    family with the CNN at 3/4 of its channels at the budget, and DistilHuBERT's two layers, which cannot fill 55%
    then, at their largest with the cut (more than half the budget)."""
    from sslc.search.baselines import baseline_configs, warm_start_configs

    budget = int(0.55 * count_macs(BASE, seconds=10.0).total)
    warm = warm_start_configs(BASE, budget, 10.0)
    combined = [f"{name}+cnn75%" for name in ANCHOR_FAMILIES if name != "uniform"]
    assert list(warm) == list(ANCHOR_FAMILIES) + combined
    two_cut = warm.pop("distilhubert-2layer+cnn75%")
    assert two_cut.layers == [0, 1] and two_cut.hidden is None and two_cut.ffn == [3072, 3072]
    assert two_cut.heads == [12, 12] and two_cut.conv_channels == [384] * 7
    assert budget / 2 <= _macs(two_cut, BASE) < (1 - ANCHOR_TOLERANCE) * budget
    combined.remove("distilhubert-2layer+cnn75%")
    for name in combined:
        config, family = warm.pop(name), name.removesuffix("+cnn75%")
        assert config.conv_channels == [round(0.75 * c.channels) for c in BASE.conv_layers]  # 384 of 512
        assert (1 - ANCHOR_TOLERANCE) * budget <= _macs(config, BASE) <= budget
        assert len(config.layers) == 12 and len(set(config.ffn)) == 1 and len(set(config.heads)) == 1
        # the CNN's MACs bought width: wider than the family's shape with the CNN whole, at the same budget
        assert config.hidden > (anchor_at_budget(family, BASE, budget, 10.0).hidden or BASE.embed_dim)
    for name, config in warm.items():
        if name == "distilhubert-2layer":
            assert config == baseline_configs(BASE, budget, 10.0)[name]
            assert _macs(config, BASE) < (1 - ANCHOR_TOLERANCE) * budget
        else:
            assert config == anchor_at_budget(name, BASE, budget, 10.0)
            assert (1 - ANCHOR_TOLERANCE) * budget <= _macs(config, BASE) <= budget
