"""Compression operators: a `CompressionConfig` says what a student keeps, `compress` builds it from a teacher.

Structured operators (depth, heads, FFN units, CNN channels, low rank) physically slice the teacher's weights;
sparsity and int8 quantization are applied on top. Importance scores choose what is kept and are cached on disk.
"""

from .cache import ImportanceCache, data_fingerprint, model_fingerprint
from .compress import compress
from .config import CompressionConfig, ConfigError, break_even_rank, config_key
from .importance import (
    as_batches,
    conv_scores_l1,
    data_scores,
    ffn_scores_l1,
    head_scores_diagonal,
    head_scores_l1,
    importance_scores,
    layer_scores,
    span_mask,
)
from .lowrank import factorize, low_rank_linear
from .quantize import quantize_int8
from .sparsity import magnitude_prune_, prunable_linears

__all__ = [
    "CompressionConfig",
    "ConfigError",
    "ImportanceCache",
    "as_batches",
    "break_even_rank",
    "compress",
    "config_key",
    "conv_scores_l1",
    "data_fingerprint",
    "data_scores",
    "factorize",
    "ffn_scores_l1",
    "head_scores_diagonal",
    "head_scores_l1",
    "importance_scores",
    "layer_scores",
    "low_rank_linear",
    "magnitude_prune_",
    "model_fingerprint",
    "prunable_linears",
    "quantize_int8",
    "span_mask",
]
