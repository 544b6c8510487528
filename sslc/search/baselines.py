"""Simple baselines a search must beat, trained exactly like its trials so the report compares like with like.

- "uniform": every layer kept, heads / FFN units / CNN channels cut by one common ratio, the largest such
  model within the MAC budget (uniform pruning to the budget).
- "distilhubert-2layer": the teacher's first two layers at full width (DistilHuBERT's student shape).
- "lighthubert-small": every layer at half the hidden width, half the heads and half the FFN units, the CNN
  whole: on HuBERT Base, LightHuBERT Small's 12 x 384, 6 heads, FFN 1536 (26.87 M params, 857 G SUPERB MACs
  against its published 27.00 M / 860.7 G).
- "fithubert-like": thin and deep: every layer at 0.625 of the hidden width (480 of 768) with the FFN as wide
  as the hidden width (FitHuBERT's 480) and as many 64-dim heads as fill it (8; FitHuBERT has 12 of 40 dims,
  and its slimmer CNN and 2x time reduction are not modelled).
- "dphubert-like": heads, FFN units and CNN channels pruned at full depth and width to the budget by one
  data-driven ranking across layers, blocks removable (`sslc.compress.global_prune`); needs the run's teacher
  and scoring data, so only when `inputs` is given.
"""

from __future__ import annotations

from sslc.compress import CompressionConfig
from sslc.compress.config import hidden_width
from sslc.compress.global_prune import prune_to_budget
from sslc.metrics import macs_in_convention
from sslc.models import EncoderConfig


def uniform_config(teacher: EncoderConfig, keep: float) -> CompressionConfig:
    config = CompressionConfig.identity(teacher)
    config.heads = [max(1, round(keep * h)) for h in config.heads]
    config.ffn = [max(1, round(keep * f)) for f in config.ffn]
    config.conv_channels = [max(1, round(keep * c)) for c in config.conv_channels]
    return config


def thin_config(teacher: EncoderConfig, width_share: float, heads_share: float, ffn_per_width: float
                ) -> CompressionConfig:
    """Every layer kept at `width_share` of the hidden width (rounded to the positional conv's groups), with
    `heads_share` of its heads and `ffn_per_width` FFN units per hidden channel."""
    config = CompressionConfig.identity(teacher)
    width = hidden_width(width_share, teacher)
    config.hidden = width if width < teacher.embed_dim else None
    config.heads = [max(1, round(heads_share * h)) for h in config.heads]
    config.ffn = [max(1, min(f, round(ffn_per_width * width))) for f in config.ffn]
    return config


def uniform_to_budget(
    teacher: EncoderConfig, max_macs: int, seconds: float, convention: str = "seconds"
) -> CompressionConfig | None:
    """The largest uniformly pruned config within `max_macs` (in `convention`, see sslc.metrics.MACS_CONVENTIONS;
    bisection on the keep ratio); None if none fits."""

    def macs(keep: float) -> int:
        return macs_in_convention(uniform_config(teacher, keep).student_architecture(teacher), convention, seconds)

    lo, hi = 0.0, 1.0
    if macs(hi) <= max_macs:
        return uniform_config(teacher, hi)
    for _ in range(30):  # MACs grow monotonically with the keep ratio
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if macs(mid) <= max_macs else (lo, mid)
    return uniform_config(teacher, lo) if lo > 0 and macs(lo) <= max_macs else None


def baseline_configs(
    teacher: EncoderConfig, max_macs: int, seconds: float, convention: str = "seconds", inputs=None
) -> dict[str, CompressionConfig]:
    """The baselines' configs; `inputs` (a `RunInputs`: its teacher model and importance batches) adds the
    data-driven ones."""
    configs = {}
    uniform = uniform_to_budget(teacher, max_macs, seconds, convention)
    if uniform is not None:
        configs["uniform"] = uniform
    configs["distilhubert-2layer"] = CompressionConfig.first_n(teacher, min(2, teacher.num_layers))
    configs["lighthubert-small"] = thin_config(teacher, 0.5, 0.5, 4.0)
    configs["fithubert-like"] = thin_config(teacher, 0.625, 0.625, 1.0)
    dphubert = inputs and prune_to_budget(inputs.teacher, inputs.importance_batches(), max_macs, seconds, convention)
    if dphubert:
        configs["dphubert-like"] = dphubert
    return configs
