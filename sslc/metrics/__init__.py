"""Cost of an encoder: MACs (analytic, and measured by FlopCounterMode), parameters and wall-clock latency."""

from .latency import LatencyResult, compare_latency, measure_latency
from .macs import (
    REFERENCE_SECONDS,
    SAMPLE_RATE,
    MacBreakdown,
    count_cnn_macs,
    count_layer_macs,
    count_macs,
    count_macs_by_module,
    count_macs_of_model,
    exact_counting,
    format_count,
    format_macs,
    linear_macs,
    measure_mac_breakdown,
    num_samples_for,
)
from .params import (
    count_layer_params_from_config,
    count_nonzero_params,
    count_params,
    count_params_from_config,
    format_params,
    linear_params,
)

__all__ = [
    "LatencyResult",
    "compare_latency",
    "measure_latency",
    "REFERENCE_SECONDS",
    "SAMPLE_RATE",
    "MacBreakdown",
    "count_cnn_macs",
    "count_layer_macs",
    "count_macs",
    "count_macs_by_module",
    "count_macs_of_model",
    "exact_counting",
    "format_count",
    "format_macs",
    "linear_macs",
    "measure_mac_breakdown",
    "num_samples_for",
    "count_layer_params_from_config",
    "count_nonzero_params",
    "count_params",
    "count_params_from_config",
    "format_params",
    "linear_params",
]
