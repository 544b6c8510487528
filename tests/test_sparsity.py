"""Sparsity that survives training: the mask `compress` sets holds through distillation, the saved student holds
the masked weights, and a trial records the non-zero count of the file it saved."""

from __future__ import annotations

import torch
from builders import random_teacher, sine_segments

from sslc.budget import Budget
from sslc.compress import CompressionConfig, compress, prunable_linears, quantize_int8
from sslc.metrics import count_nonzero_params, count_params
from sslc.models import PRESETS
from sslc.runs.student_file import WEIGHTS_FILE, load_student, read_student_file, save_student
from sslc.search.inputs import prepare_inputs
from sslc.search.trial import TrialSetup, train_and_measure
from sslc.trainers import TeacherTargets, TrainerConfig, run_short_trial

CROP = 1.0


def _effective(linear) -> torch.Tensor:
    """The weight a linear computes with (under a mask: weight_orig * weight_mask), read from its state."""
    state = linear.state_dict()
    return state["weight_orig"] * state["weight_mask"] if "weight_orig" in state else state["weight"]


def _file_nonzeros(path) -> int:
    return sum(int(torch.count_nonzero(t)) for t in read_student_file(path)["state_dict"].values()
               if t.is_floating_point())


def test_distillation_keeps_the_pruned_weights_at_zero_and_the_file_holds_them(tmp_path):
    teacher = random_teacher(PRESETS["tiny"]())
    config = CompressionConfig.identity(teacher.config)
    config.sparsity, config.ffn_rank = 0.5, [16, None]
    student = compress(teacher, config)
    pruned = [_effective(linear) == 0 for linear in prunable_linears(student)]
    before = [_effective(linear).clone() for linear in prunable_linears(student)]
    nonzero_before = count_nonzero_params(student)
    assert sum(int(p.sum()) for p in pruned) / sum(p.numel() for p in pruned) >= 0.5
    assert nonzero_before == count_params(student) - sum(int(p.sum()) for p in pruned)

    train, heldout = sine_segments(tmp_path, CROP)
    targets = TeacherTargets(teacher, tmp_path / "cache", crop_seconds=CROP)
    trainer = TrainerConfig(steps=4, batch_size=2, lr=1e-2, log_every=2, crop_seconds=CROP, device="cpu")
    result = run_short_trial(student, targets, train, heldout, trainer, kept_layers=config.layers)
    assert result.status == "completed"
    after = [_effective(linear) for linear in prunable_linears(student)]
    for mask, old, new in zip(pruned, before, after):
        assert torch.equal(new == 0, mask)  # exactly the pruned weights are zero, as before training
        assert not torch.equal(old, new)  # and the others did train
    assert count_nonzero_params(student) == nonzero_before

    path = save_student(tmp_path / "student.pt", student, config.to_dict(), "random:tiny")
    saved = read_student_file(path)["state_dict"]
    assert not [k for k in saved if k.endswith(("_orig", "_mask"))]
    assert _file_nonzeros(path) == nonzero_before
    loaded = load_student(path)
    wave = torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded(wave)[-1], student.eval()(wave).hidden_states[-1], atol=1e-6)
        assert torch.isfinite(quantize_int8(student)(wave).hidden_states[-1]).all()  # int8 folds the masks


def test_a_trial_records_the_nonzeros_of_the_student_it_saved(tmp_path):
    inputs = prepare_inputs("random:tiny", "demo", tmp_path / "run", CROP, seed=0)
    trainer = TrainerConfig(steps=3, batch_size=2, lr=1e-2, log_every=1, crop_seconds=CROP, device="cpu")
    setup = TrialSetup(run=inputs, run_dir=tmp_path / "run", trainer=trainer, budget=Budget(max_macs=10**12, seconds=1.0),
                       latency_repeats=1)
    config = CompressionConfig.identity(inputs.teacher.config)
    config.sparsity = 0.3
    result = train_and_measure(setup, config.to_dict(), tmp_path / "trial", macs=1)
    assert result["status"] == "completed"
    assert result["nonzero_params"] == _file_nonzeros(tmp_path / "trial" / WEIGHTS_FILE)
    dense = compress(inputs.teacher, CompressionConfig.identity(inputs.teacher.config))
    pruned = sum(round(0.3 * linear.weight.numel()) for linear in prunable_linears(dense))
    assert result["nonzero_params"] <= count_params(dense) - pruned
