"""The speech SSL encoder family (wav2vec 2.0, HuBERT, WavLM) with per-layer sizes."""

from .builders import PRESETS, base_config, build_encoder, large_config, tiny_config
from .components import LowRankLinear, make_linear
from .config import ConvLayerSpec, EncoderConfig, LayerSpec, RelativePositionSpec
from .encoder import EncoderOutput, SpeechEncoder, SplitState

__all__ = [
    "PRESETS", "base_config", "build_encoder", "large_config", "tiny_config", "LowRankLinear", "make_linear",
    "ConvLayerSpec", "EncoderConfig", "LayerSpec", "RelativePositionSpec", "EncoderOutput", "SpeechEncoder", "SplitState",
]
