"""The DPHuBERT-like baseline: one data-driven ranking across layers, pruned to the budget."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from builders import random_teacher

from sslc.compress import compress, data_scores
from sslc.compress.global_prune import prune_to_budget
from sslc.compress.slicing import top_k
from sslc.metrics import count_macs
from sslc.models import PRESETS
from sslc.search.baselines import baseline_configs

SECONDS = 1.0
pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors:UserWarning")


@pytest.fixture(scope="module")
def teacher():
    return random_teacher(PRESETS["tiny"]())


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(4)
    return [(torch.randn(2, 8000, generator=generator), torch.tensor([8000, 6000]))]


@pytest.mark.parametrize("share", [0.3, 0.6])
def test_within_the_budget_it_keeps_the_top_ranked_heads_and_units(teacher, data, share):
    spec = teacher.config
    budget = int(share * count_macs(spec, seconds=SECONDS).total)
    config = prune_to_budget(teacher, data, budget, SECONDS)
    macs = count_macs(config.student_architecture(spec), seconds=SECONDS).total
    assert 0.98 * budget <= macs <= budget
    assert config.layers == list(range(spec.num_layers)) and config.hidden is None  # full depth and width

    # The ranking, recomputed: raw |activation x gradient| per MAC, the MACs from the formulas of a head
    # (q, k, v, out projections and the two attention matmuls) and of an FFN unit (a row of fc1, a column of fc2).
    raw = data_scores(teacher, data, normalise=False)
    frames, width, head_dim = spec.frames_for(int(SECONDS * 16000)), spec.embed_dim, spec.head_dim
    head_cost = frames * 4 * width * head_dim + 2 * frames * frames * head_dim
    unit_cost = frames * 2 * width
    kept, removed = [], []  # (score per MAC, MACs)
    for layer in range(spec.num_layers):
        for scores, size, cost in ((raw["head"][layer], config.heads[layer], head_cost),
                                   (raw["ffn"][layer], config.ffn[layer], unit_cost)):
            top = set(top_k(scores, size).tolist())
            for index, score in enumerate(scores.tolist()):
                (kept if index in top else removed).append((score / cost, cost))
    assert removed and kept
    # Every element ranked above a kept one is kept, unless giving it back would not fit the budget.
    worst_kept = min(rank for rank, _ in kept)
    assert all(cost > budget - macs for rank, cost in removed if rank > worst_kept)

    # compress keeps exactly those: the student's weights are the teacher's top-ranked rows.
    student = compress(teacher, config, data=data)
    for layer in range(spec.num_layers):
        if config.ffn[layer]:
            units = top_k(raw["ffn"][layer], config.ffn[layer])
            assert torch.equal(student.layers[layer].feed_forward.fc1.weight,
                               teacher.layers[layer].feed_forward.fc1.weight[units])
        if config.heads[layer]:
            heads = top_k(raw["head"][layer], config.heads[layer])
            rows = (heads[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
            assert torch.equal(student.layers[layer].attention.q_proj.weight,
                               teacher.layers[layer].attention.q_proj.weight[rows])
    assert count_macs(student.config, seconds=SECONDS).total == macs


def test_a_tight_budget_removes_blocks_and_an_impossible_one_gives_none(teacher, data):
    spec = teacher.config
    full = count_macs(spec, seconds=SECONDS).total
    config = prune_to_budget(teacher, data, int(0.12 * full), SECONDS)
    assert 0 in config.heads + config.ffn  # a block is gone
    assert torch.isfinite(compress(teacher, config, data=data)(data[0][0]).hidden_states[-1]).all()
    assert prune_to_budget(teacher, data, 1000, SECONDS) is None


def test_the_baselines_include_it_when_given_the_runs_inputs(teacher, data):
    budget = int(0.5 * count_macs(teacher.config, seconds=SECONDS).total)
    inputs = SimpleNamespace(teacher=teacher, importance_batches=lambda: data)
    configs = baseline_configs(teacher.config, budget, SECONDS, inputs=inputs)
    assert configs["dphubert-like"] == prune_to_budget(teacher, data, budget, SECONDS)
    assert "dphubert-like" not in baseline_configs(teacher.config, budget, SECONDS)
