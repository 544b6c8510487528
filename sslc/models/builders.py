"""Builder functions: the reference architectures as `EncoderConfig`s, and `build_encoder`."""

from __future__ import annotations

import torch

from .config import ConvLayerSpec, EncoderConfig, LayerSpec, RelativePositionSpec
from .encoder import SpeechEncoder

# (channels, kernel, stride) of the wav2vec 2.0 front end: 320x down-sampling, 20 ms frames at 16 kHz.
_BASE_CONV = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2


def _conv(specs) -> list[ConvLayerSpec]:
    return [ConvLayerSpec(c, k, s) for c, k, s in specs]


def _layers(count: int, heads: int, ffn_dim: int) -> list[LayerSpec]:
    return [LayerSpec(heads=heads, ffn_dim=ffn_dim) for _ in range(count)]


def base_config(family: str) -> EncoderConfig:
    """HuBERT / wav2vec 2.0 / WavLM Base: 12 post-LN layers of 768 wide, 12 heads, 3072 FFN units."""
    return EncoderConfig(
        family=family,
        conv_layers=_conv(_BASE_CONV),
        embed_dim=768,
        head_dim=64,
        layers=_layers(12, 12, 3072),
        extractor_norm="group",
        conv_bias=False,
        layer_norm_first=False,
        relative_position=RelativePositionSpec(320, 800, 12) if family == "wavlm" else None,
    ).validate()


def large_config(family: str) -> EncoderConfig:
    """Large layout: 24 pre-LN layers of 1024 wide, 16 heads, 4096 FFN units, LayerNorm convs with bias."""
    return EncoderConfig(
        family=family,
        conv_layers=_conv(_BASE_CONV),
        embed_dim=1024,
        head_dim=64,
        layers=_layers(24, 16, 4096),
        extractor_norm="layer",
        conv_bias=True,
        layer_norm_first=True,
        relative_position=RelativePositionSpec(320, 800, 16) if family == "wavlm" else None,
    ).validate()


def tiny_config(family: str = "hubert") -> EncoderConfig:
    """A 2-layer, 64-wide model with the real 320x front end, for tests and quick offline runs."""
    return EncoderConfig(
        family=family,
        conv_layers=_conv([(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2),
        embed_dim=64,
        head_dim=16,
        layers=_layers(2, 4, 128),
        pos_conv_kernel=16,
        pos_conv_groups=4,
        relative_position=RelativePositionSpec(32, 80, 4) if family == "wavlm" else None,
    ).validate()


PRESETS = {
    "hubert-base": lambda: base_config("hubert"),
    "wav2vec2-base": lambda: base_config("wav2vec2"),
    "wavlm-base": lambda: base_config("wavlm"),
    "hubert-large": lambda: large_config("hubert"),
    "wav2vec2-large": lambda: large_config("wav2vec2"),
    "wavlm-large": lambda: large_config("wavlm"),
    "tiny": lambda: tiny_config("hubert"),
    "tiny-wavlm": lambda: tiny_config("wavlm"),
}


def build_encoder(config: EncoderConfig, seed: int | None = None) -> SpeechEncoder:
    """Build an encoder; with `seed`, its random initialisation is reproducible."""
    if seed is None:
        return SpeechEncoder(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SpeechEncoder(config)
