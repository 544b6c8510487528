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


`anchors_at_budget` scales each anchor family to a MAC budget instead (within `ANCHOR_TOLERANCE` below it), each
by its own rule (`ANCHOR_FAMILIES`), so anchors are compared with a search's point at equal compute; a search starts
from those shapes (`warm_start_configs`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from sslc.compress import CompressionConfig
from sslc.compress.config import hidden_width
from sslc.compress.global_prune import prune_to_budget
from sslc.errors import UserError
from sslc.metrics import format_macs, macs_in_convention
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


# ---- anchor families scaled to a budget -----------------------------------------------------------------------
ANCHOR_TOLERANCE = 0.01  # an anchor at a budget costs between (1 - this) x the budget and the budget


@dataclass(frozen=True)
class ThinFamily:
    """A family of thin students: `depth` layers (None: all) at hidden width w, round(heads_per_64 x w / head dim)
    heads and round(ffn_per_width x w) FFN units, the CNN whole. Its published shape is one width of it."""

    depth: int | None
    heads_per_64: float
    ffn_per_width: float

    def at_width(self, teacher: EncoderConfig, width: int, conv_keep: float = 1.0) -> CompressionConfig:
        """The family's shape at hidden width `width`; `conv_keep` < 1 cuts every CNN layer to that share of its
        channels (not the family's own rule: the combination a warm start adds)."""
        config = CompressionConfig.first_n(teacher, self.depth) if self.depth else CompressionConfig.identity(teacher)
        config.hidden = width if width < teacher.embed_dim else None
        config.heads = [max(1, min(h, round(self.heads_per_64 * width / teacher.head_dim))) for h in config.heads]
        config.ffn = [max(1, min(f, round(self.ffn_per_width * width))) for f in config.ffn]
        config.conv_channels = [max(1, round(conv_keep * c)) for c in config.conv_channels]
        return config


# Each family's rule, in one place (shares of HuBERT Base's 768 wide, 12 heads of 64, FFN 3072):
# DistilHuBERT: 2 layers; at full width its heads and FFN are the teacher's, cut with the width to fit.
# LightHuBERT Small: 12 x 384, 6 heads, FFN 1536 (thin, uniform: heads and FFN in the teacher's proportions).
# FitHuBERT: thin-deep, 12 x 480, FFN 480 (FFN as wide as the hidden width; 64-dim heads filling it).
# ARMHuBERT-S: 12 x 432, FFN 816 (64-dim heads filling the width: 7). STaRHuBERT: 12 x 432, 8 heads, FFN 976.
ANCHOR_FAMILIES: dict[str, ThinFamily | None] = {
    "uniform": None,  # heads, FFN units and CNN channels cut by one keep ratio: `uniform_to_budget`
    "distilhubert-2layer": ThinFamily(depth=2, heads_per_64=1.0, ffn_per_width=4.0),
    "lighthubert-small": ThinFamily(depth=None, heads_per_64=1.0, ffn_per_width=4.0),
    "fithubert-like": ThinFamily(depth=None, heads_per_64=1.0, ffn_per_width=1.0),
    "armhubert-s-like": ThinFamily(depth=None, heads_per_64=1.0, ffn_per_width=816 / 432),
    "starhubert-like": ThinFamily(depth=None, heads_per_64=8 * 64 / 432, ffn_per_width=976 / 432),
}


def anchor_at_budget(name: str, teacher: EncoderConfig, max_macs: int, seconds: float,
                     convention: str = "seconds", conv_keep: float = 1.0) -> CompressionConfig:
    """Family `name` (`ANCHOR_FAMILIES`) scaled to `max_macs`: within `ANCHOR_TOLERANCE` below it. A thin family
    with `conv_keep` < 1 is scaled so with its CNN cut to that share of its channels (`ThinFamily.at_width`).

    Width, heads and keep ratios move the MACs in steps of a few percent (more on a small teacher), so the FFN,
    the finest knob, absorbs the rest: every layer gets the widest FFN (up to the teacher's) that keeps the shape
    within the budget. A thin family takes, among the hidden widths (multiples of the positional conv's groups)
    where that lands within the tolerance, the one whose FFN stays nearest the family's FFN-to-width ratio;
    uniform pruning takes the largest keep ratio that fits, its FFN then widened. UserError when no shape of the
    family gets within the tolerance (the budget is below its smallest or above its largest shape)."""

    macs = _macs_counter(teacher, seconds, convention)

    def reaches(config: CompressionConfig | None) -> bool:
        return config is not None and macs(config) >= (1 - ANCHOR_TOLERANCE) * max_macs

    family = ANCHOR_FAMILIES[name]
    if family is None and conv_keep != 1.0:
        raise ValueError("uniform pruning cuts the CNN by its own keep ratio")
    if family is None:
        uniform = uniform_to_budget(teacher, max_macs, seconds, convention)
        chosen = _widest_ffn(uniform, teacher, max_macs, macs) if uniform is not None else None
        smallest, largest = uniform_config(teacher, 0.0), CompressionConfig.identity(teacher)
        chosen = chosen if reaches(chosen) else None
    else:
        widths = range(teacher.pos_conv_groups, teacher.embed_dim + 1, teacher.pos_conv_groups)
        fitted = [(w, _widest_ffn(family.at_width(teacher, w, conv_keep), teacher, max_macs, macs)) for w in widths]
        fitted = [(w, config) for w, config in fitted if reaches(config)]
        chosen = min(fitted, key=lambda wc: abs(math.log(wc[1].ffn[0] / (family.ffn_per_width * wc[0]))),
                     default=(None, None))[1]
        smallest = family.at_width(teacher, widths[0], conv_keep)
        largest = family.at_width(teacher, widths[-1], conv_keep)
    if chosen is None:
        raise UserError(f"the {name} anchor cannot reach {format_macs(max_macs)}MACs: its shapes cost "
                        f"{format_macs(macs(smallest))}MACs to "
                        f"{format_macs(macs(_widest_ffn(largest, teacher, None, macs)))}MACs")
    return chosen


def _macs_counter(teacher: EncoderConfig, seconds: float, convention: str) -> Callable[[CompressionConfig], int]:
    """A config's MACs on `teacher` as the budget counts them."""
    return lambda config: macs_in_convention(config.student_architecture(teacher), convention, seconds)


def _widest_ffn(config: CompressionConfig, teacher: EncoderConfig, max_macs: int | None,
                macs: Callable[[CompressionConfig], int]) -> CompressionConfig | None:
    """`config` with every layer's FFN at the widest common width (1 up to the teacher's) within `max_macs`
    (None: no limit); None if even one unit is over it."""
    full = [teacher.layers[t].ffn_dim for t in config.layers]

    def with_ffn(units: int) -> CompressionConfig:
        return CompressionConfig.from_dict({**config.to_dict(), "ffn": [min(units, f) for f in full]})

    lo, hi = 1, max(full)
    if max_macs is None:
        return with_ffn(hi)
    if macs(with_ffn(lo)) > max_macs:
        return None
    while lo < hi:  # MACs grow with the FFN width: the widest that fits
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if macs(with_ffn(mid)) <= max_macs else (lo, mid - 1)
    return with_ffn(lo)


def anchors_at_budget(teacher: EncoderConfig, max_macs: int, seconds: float, convention: str = "seconds"
                      ) -> tuple[dict[str, CompressionConfig], dict[str, str]]:
    """Every anchor family at the budget (`anchor_at_budget`), and why each family that cannot reach it cannot."""
    configs, unreachable = {}, {}
    for name in ANCHOR_FAMILIES:
        try:
            configs[name] = anchor_at_budget(name, teacher, max_macs, seconds, convention)
        except UserError as error:
            unreachable[name] = str(error)
    return configs, unreachable


# The CNN share the warm start's combined shapes keep. The CNN is a third of HuBERT Base's MACs, and every thin
# family keeps it whole, so at 40% of the MACs FitHuBERT's rule leaves the Transformer 64 wide on the mini-HuBERT.
# Measured there (40%, retrained 300 steps by anchor_margin's plan, phone-probed on held-out voices): the
# FitHuBERT-like shape with its CNN at 0.75 of its channels (12 x 144) had PER 0.508 against 0.572 with the CNN
# whole (12 x 64); at 0.625 0.595, at 0.5 0.697: deeper cuts cost more than the width they buy after short
# training (every layer above a narrowed CNN must re-learn), though published CNN pruning at full training keeps
# HuBERT's quality to a 40-50% cut (Peng et al. 2023).
WARM_START_CONV_KEEP = 0.75


def warm_start_configs(teacher: EncoderConfig, max_macs: int, seconds: float, convention: str = "seconds"
                       ) -> dict[str, CompressionConfig]:
    """The shapes a search asks first: every anchor family scaled to the budget (`anchors_at_budget`), so the
    front starts with points that fill the budget and the search has to beat the anchors' own best, not a shape
    that leaves part of the budget unused; a family that cannot reach the budget starts from its published
    shape (`baseline_configs`), which the searcher narrows to fit or leaves out. Then each thin family combined
    with a CNN cut to WARM_START_CONV_KEEP, scaled to the budget likewise (named `<family>+cnn75%`; left out where
    it cannot reach it): the combination of techniques the anchors' shapes never make, which a sampler rarely
    draws (every layer thin at once, the CNN cut) in a space of per-layer knobs; a family whose cut shapes all cost
    less than the budget adds its largest (`_largest_below`) where that fills at least half of it."""
    at_budget, _ = anchors_at_budget(teacher, max_macs, seconds, convention)
    published = baseline_configs(teacher, max_macs, seconds, convention)
    configs = {name: at_budget.get(name) or published[name] for name in ANCHOR_FAMILIES
               if name in at_budget or name in published}
    for name, family in ANCHOR_FAMILIES.items():
        if family is None:
            continue  # uniform pruning cuts the CNN already
        try:
            combined = anchor_at_budget(name, teacher, max_macs, seconds, convention, WARM_START_CONV_KEEP)
        except UserError:
            combined = _largest_below(family, teacher, max_macs, seconds, convention, WARM_START_CONV_KEEP)
        if combined is not None:
            configs[f"{name}+cnn{WARM_START_CONV_KEEP:.0%}"] = combined
    return configs


def _largest_below(family: ThinFamily, teacher: EncoderConfig, max_macs: int, seconds: float, convention: str,
                   conv_keep: float) -> CompressionConfig | None:
    """The family's largest shape with its CNN cut to `conv_keep` (the teacher's width, its widest FFN) when even
    that costs less than the budget, yet at least half of it; else None. DistilHuBERT's two layers at full width
    with the CNN at 3/4 cost 33% of HuBERT Base's MACs (34% of the mini-HuBERT's): no width of them fills a 40% or
    55% budget, and that shallow-and-cut combination is one the warm start would otherwise never ask (on the
    mini-HuBERT at 40% the DistilHuBERT-like 2 x 128 with the CNN whole probed about as well as sslc's pick,
    `benchmarks/anchor_margin.py`)."""
    macs = _macs_counter(teacher, seconds, convention)
    largest = _widest_ffn(family.at_width(teacher, teacher.embed_dim, conv_keep), teacher, None, macs)
    return largest if max_macs / 2 <= macs(largest) < max_macs else None
