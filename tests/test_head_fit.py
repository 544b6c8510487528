"""How every student's prediction heads start (`fit_heads_`, issue 23): the start must not reward narrowness.

On a HuBERT-Base-shaped random teacher, at the demo's batch (2 x 1 s) and the search's default (4 x 2 s), scored
before any training step (`score_at_start`) on a short generated corpus (fewer frames than a wide student has
features at the demo's batch: the case where a barely regularised fit overfitted with the width)."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from sslc.compress import CompressionConfig, compress
from sslc.compress.config import hidden_width
from sslc.data import SegmentDataset, discover_audio, make_demo_corpus, make_segments, split_heldout
from sslc.losses import layer_distillation_loss
from sslc.metrics import count_macs
from sslc.models.teachers import load_teacher
from sslc.search.baselines import uniform_to_budget
from sslc.spaces import SearchSpace
from sslc.trainers import TrainerConfig, score_at_start
from sslc.trainers.heads import RIDGES, PredictionHeads, fit_heads_
from sslc.trainers.targets import TeacherTargets

BATCHES = {"demo": (2, 1.0), "default": (4, 2.0)}
BUDGET = 30e9  # the demo's
TRIALS = 3


@pytest.fixture(scope="module")
def base_teacher():
    return load_teacher("random:hubert-base").eval().requires_grad_(False)


def _shapes(teacher) -> dict[str, CompressionConfig]:
    """Students that differ only in hidden width (the wider keeps a superset of the narrower one's channels),
    the `uniform` baseline at the demo's budget, a copy of the teacher, and TRIALS configs of the `combined`
    space within the budget as the search's random start-up draws them (l1 importance, no int8: no data needed;
    full rank: factorising HuBERT Base's linears takes minutes on a busy CPU)."""
    shape = CompressionConfig.identity(teacher)
    shape.ffn = [round(0.75 * f) for f in shape.ffn]
    shapes = {"hidden 1": shape, "hidden 0.5": dataclasses.replace(shape, hidden=hidden_width(0.5, teacher)),
              "uniform": uniform_to_budget(teacher, int(BUDGET), 10.0), "copy": CompressionConfig.identity(teacher)}
    space, rng = SearchSpace.load("combined"), random.Random(0)
    while len(shapes) < 4 + TRIALS:
        drawn = space.sample(teacher, rng)
        config = dataclasses.replace(
            drawn, quantize="none", head_importance="l1", ffn_importance="l1", conv_importance="l1",
            hidden_importance="l1", attn_rank=[None] * len(drawn.layers), ffn_rank=[None] * len(drawn.layers))
        if count_macs(config.student_architecture(teacher), 10.0).total <= BUDGET:
            shapes[f"trial {len(shapes) - 3}"] = config
    return shapes


@pytest.fixture(scope="module", params=sorted(BATCHES))
def start_scores(request, base_teacher, tmp_path_factory):
    batch, crop = BATCHES[request.param]
    root = tmp_path_factory.mktemp(f"corpus-{request.param}")
    files = discover_audio(make_demo_corpus(root / "audio", num_files=8, seconds=(1.0, 2.0)))
    train_files, heldout_files = split_heldout(files, fraction=0.2)
    train = SegmentDataset(make_segments(train_files, crop, seed=0))
    heldout = SegmentDataset(make_segments(heldout_files, crop, seed=0))
    targets = TeacherTargets(base_teacher, root / "cache", crop_seconds=crop)
    config = TrainerConfig(steps=1, batch_size=batch, crop_seconds=crop, device="cpu")
    torch.manual_seed(0)
    scores = {}
    for name, shape in _shapes(base_teacher.config).items():
        student = compress(base_teacher, shape)
        scores[name] = score_at_start(student, targets, train, heldout, config, kept_layers=shape.layers)[0]
    return request.param, scores


def test_a_student_keeping_a_superset_of_channels_does_not_start_worse(start_scores):
    batch, scores = start_scores
    assert scores["hidden 1"] <= scores["hidden 0.5"], (batch, scores)


def test_the_uniform_baseline_starts_within_the_trials_range(start_scores):
    """Not an outlier any more (before the change, after one step: 243.9 and 14.0 against 1.2-3.4). It cuts the
    CNN to 40% of its channels, which costs a random teacher's students the most, so it may sit just above the
    few drawn trials (measured: 0.492 against 0.453-0.478 at the default batch): within 10% of the worst."""
    batch, scores = start_scores
    others = [v for k, v in scores.items() if k.startswith("trial")]
    assert min(others) <= scores["uniform"] <= 1.1 * max(others), (batch, scores)


def test_a_copy_of_the_teacher_still_starts_at_zero(start_scores):
    batch, scores = start_scores
    assert scores["copy"] <= 1e-5, (batch, scores)


# ---- the fit itself, against independent references ------------------------------------------------------------
def test_the_chosen_ridge_is_the_closed_form_ridge_that_scores_best_on_the_check_frames():
    """Each candidate recomputed by a plain solve (no eigendecomposition); the fit keeps the best by the
    distillation loss on the check frames, refitted on all frames."""
    generator = torch.Generator().manual_seed(0)
    d, big_d = 40, 12
    x = torch.randn(60, d, generator=generator)  # fewer frames than twice the features: ridge matters
    true_weight = torch.randn(big_d, d, generator=generator) / d ** 0.5
    y = x @ true_weight.T + 0.5 * torch.randn(60, big_d, generator=generator)
    fit, check = (x[:45], y[:45]), (x[45:], y[45:])
    heads = PredictionHeads([(1, 1)], d, big_d)
    with torch.no_grad():
        heads.heads[0].weight.zero_()  # a placed start that cannot win
    chosen = fit_heads_(heads, ([fit[0]], [fit[1]]), ([check[0]], [check[1]]))

    def ridge_fit(xs, ys, ridge):
        xs, ys = xs.double(), ys.double()
        xc, yc = xs - xs.mean(0), ys - ys.mean(0)
        gram = xc.T @ xc
        weight = torch.linalg.solve(gram + ridge * gram.diagonal().mean() * torch.eye(d, dtype=gram.dtype), xc.T @ yc)
        return weight, ys.mean(0) - xs.mean(0) @ weight

    def check_loss(ridge):
        weight, bias = ridge_fit(*fit, ridge)
        return float(layer_distillation_loss((check[0].double() @ weight + bias).float()[None], check[1][None]))

    best = min(RIDGES, key=check_loss)
    assert chosen == [best]
    weight, bias = ridge_fit(x, y, best)
    assert torch.allclose(heads.heads[0].weight, weight.T.float(), atol=1e-5)
    assert torch.allclose(heads.heads[0].bias, bias.float(), atol=1e-5)


def test_the_placed_start_is_kept_when_no_fit_beats_it():
    """An exact identity start (a copy of the teacher) stays exact: no ridge fit scores below 0."""
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    heads = PredictionHeads([(1, 1)], 8, 8)  # identity start
    assert fit_heads_(heads, ([x[:40]], [x[:40]]), ([x[40:]], [x[40:]])) == [None]
    assert torch.equal(heads.heads[0].weight, torch.eye(8))
