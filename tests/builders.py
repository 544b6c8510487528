"""Models and audio the tests build: teachers whose every parameter shows a wrong slice, the large models' layout
at the tiny size, and a small generated corpus of noise + sines cut into training and held-out segments."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from sslc.data import SAMPLE_RATE, SegmentDataset, discover_audio, make_segments, split_heldout
from sslc.models import build_encoder, tiny_config


def random_teacher(config):
    """A seeded random teacher whose norms and WavLM gate constants are not at their init values (ones and
    zeros would hide a wrong slice or order of them)."""
    model = build_encoder(config, seed=0).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or "gru_rel_pos_const" in name:
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
    return model


def pre_ln_tiny():
    """The large models' layout (pre-LN, LayerNorm on every conv, conv bias) at the tiny size."""
    return dataclasses.replace(tiny_config(), layer_norm_first=True, extractor_norm="layer", conv_bias=True).validate()


def sine_segments(root: Path, crop: float) -> tuple[SegmentDataset, SegmentDataset]:
    """(train, heldout) SegmentDatasets over 7 generated files of noise + sines written to `root`, cropped to
    `crop` seconds."""
    rng = np.random.default_rng(0)
    for i in range(7):
        t = np.arange(int(1.25 * SAMPLE_RATE)) / SAMPLE_RATE
        wave = 0.05 * rng.standard_normal(t.size)
        for freq in rng.uniform(100, 3000, size=3):
            wave += 0.2 * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
        sf.write(str(root / f"utt{i}.wav"), wave.astype(np.float32), SAMPLE_RATE)
    train, heldout = split_heldout(discover_audio(root), fraction=0.25)
    return SegmentDataset(make_segments(train, crop, seed=0)), SegmentDataset(make_segments(heldout, crop, seed=0))
