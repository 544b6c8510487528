"""Multiply-accumulate counts of a `SpeechEncoder`, computed analytically from its `EncoderConfig`.

The count follows exactly what `torch.utils.flop_counter.FlopCounterMode` counts (divided by two, since it reports
FLOPs = 2 x MACs): convolutions, linears and the attention matmuls. Norms, activations, softmax, the relative
position table lookup and element-wise adds cost nothing here, and neither do biases. `count_macs_of_model` is the
independent reference: it runs the model under `FlopCounterMode`.

Conventions: one waveform (batch 1); a conv costs out_ch * in_ch / groups * kernel MACs per output frame; a linear
in * out per frame (low-rank: in * rank + rank * out); a layer's two attention matmuls (scores QK^T and context AV)
cost 2 * heads * T^2 * head_dim.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields

import torch
from torch import nn

from sslc.models.config import EncoderConfig, LayerSpec

REFERENCE_SECONDS = 10.0
SAMPLE_RATE = 16000
RELATIVE_GATE_OUTPUTS = 8  # WavLM's gru_rel_pos_linear maps each head's head_dim slice to 8 gate logits


@dataclass
class MacBreakdown:
    """MACs by part of the encoder; `total` is their sum."""

    cnn: int = 0
    feature_projection: int = 0
    positional_conv: int = 0
    attention_projections: int = 0  # q, k, v and out linears
    attention_matmuls: int = 0  # scores QK^T and context AV
    relative_position_gate: int = 0  # WavLM's per-layer gate linear
    ffn: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def as_dict(self) -> dict[str, int]:
        """Every part plus "total", as plain ints."""
        parts = {f.name: int(getattr(self, f.name)) for f in fields(self)}
        parts["total"] = self.total
        return parts

    def __add__(self, other: MacBreakdown) -> MacBreakdown:
        if not isinstance(other, MacBreakdown):
            return NotImplemented
        return MacBreakdown(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


# ---- formatting ----------------------------------------------------------------------------------------------
_UNITS = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))


def format_count(n: float, unit: str | None = None, digits: int = 2) -> str:
    """74_067_000_000 -> "74.07 G"; `unit` ("T", "G", "M", "K" or "") fixes the scale, else it is picked."""
    scales = dict((u, s) for s, u in _UNITS) | {"": 1.0}
    if unit is None:
        unit = next((u for s, u in _UNITS if abs(n) >= s), "")
    if unit not in scales:
        raise ValueError(f"unit must be one of {sorted(scales)}, got {unit!r}")
    if unit == "":
        return f"{int(n)}" if float(n).is_integer() else f"{n:.{digits}f}"
    return f"{n / scales[unit]:.{digits}f} {unit}"


def format_macs(n: float, unit: str | None = None, digits: int = 2) -> str:
    """MACs for people: `format_macs(74_067_284_736) == "74.07 G"`."""
    return format_count(n, unit, digits)


# ---- analytic count -------------------------------------------------------------------------------------------
def num_samples_for(seconds: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Samples in `seconds` of audio (rounded to the nearest sample)."""
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if sample_rate < 1:
        raise ValueError(f"sample_rate must be >= 1, got {sample_rate}")
    return int(round(seconds * sample_rate))


def linear_macs(in_features: int, out_features: int, rank: int | None = None) -> int:
    """MACs of one linear per frame; a low-rank one is in -> rank -> out."""
    if rank is None:
        return in_features * out_features
    return in_features * rank + rank * out_features


def positional_conv_frames(config: EncoderConfig, frames: int) -> int:
    """Output length of the positional conv before the trim (padding kernel // 2 on both sides)."""
    kernel = config.pos_conv_kernel
    return frames + 2 * (kernel // 2) - kernel + 1


def count_cnn_macs(config: EncoderConfig, num_samples: int) -> int:
    """MACs of the convolutional feature extractor for one waveform of `num_samples` samples."""
    total, in_channels, length = 0, 1, num_samples
    for conv in config.conv_layers:
        length = (length - conv.kernel) // conv.stride + 1
        if length < 1:
            raise ValueError(f"{num_samples} samples are too short for the conv front end (no frames left)")
        total += conv.channels * in_channels * conv.kernel * length
        in_channels = conv.channels
    return total


def count_layer_macs(config: EncoderConfig, layer: LayerSpec | int, frames: int) -> MacBreakdown:
    """MACs of one Transformer layer over `frames` frames (only the attention and FFN parts are non-zero)."""
    spec = config.layers[layer] if isinstance(layer, int) else layer
    embed, head_dim, heads = config.embed_dim, config.head_dim, spec.heads
    inner = heads * head_dim
    ranks = spec.ranks
    if heads == 0:  # the attention block is removed (components.EncoderLayer)
        projections = matmuls = gate = 0
    else:
        projections = frames * (
            sum(linear_macs(embed, inner, ranks.get(name)) for name in ("q", "k", "v"))
            + linear_macs(inner, embed, ranks.get("out"))
        )
        matmuls = 2 * heads * frames * frames * head_dim
        gate = (
            heads * frames * head_dim * RELATIVE_GATE_OUTPUTS if config.relative_position is not None else 0
        )
    ffn = frames * (
        linear_macs(embed, spec.ffn_dim, ranks.get("fc1"))
        + linear_macs(spec.ffn_dim, embed, ranks.get("fc2"))
    )
    return MacBreakdown(
        attention_projections=projections, attention_matmuls=matmuls, relative_position_gate=gate, ffn=ffn
    )


def count_macs(
    config: EncoderConfig,
    seconds: float = REFERENCE_SECONDS,
    sample_rate: int = SAMPLE_RATE,
    num_samples: int | None = None,
) -> MacBreakdown:
    """MACs of one forward pass over one waveform of `seconds` (or exactly `num_samples` samples), from the config.

    Equal, to the MAC, to what `FlopCounterMode` measures on the built model (see `count_macs_of_model`).
    """
    if num_samples is None:
        num_samples = num_samples_for(seconds, sample_rate)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    cnn = count_cnn_macs(config, num_samples)
    frames = config.frames_for(num_samples)
    embed = config.embed_dim
    pos_conv_per_frame = embed * (embed // config.pos_conv_groups) * config.pos_conv_kernel
    parts = MacBreakdown(
        cnn=cnn,
        feature_projection=frames * linear_macs(config.conv_out_channels, embed),
        positional_conv=pos_conv_per_frame * positional_conv_frames(config, frames),
    )
    for spec in config.layers:
        parts = parts + count_layer_macs(config, spec, frames)
    return parts


# The convention of the published tables (SUPERB's profiler): MACs summed over 32 fixed LibriSpeech test-clean
# utterances, batch 1. Their lengths in samples at 16 kHz (224.86 s in all).
SUPERB_UTTERANCE_SAMPLES = (
    20560, 34560, 38480, 42560, 45600, 48720, 52000, 55120, 59120, 62720, 66400, 71200, 75200, 78640, 82800, 87520,
    92720, 98560, 104400, 111120, 118480, 125040, 132720, 142640, 154000, 166720, 180880, 197920, 217920, 239280,
    268160, 326000,
)
# How MACs are quoted: "seconds" (one waveform of the budget's length, 10 s by default: sslc's own convention) or
# "superb" (the published tables' sum over SUPERB_UTTERANCE_SAMPLES).
MACS_CONVENTIONS = ("seconds", "superb")


def count_macs_superb(config: EncoderConfig) -> int:
    """MACs in the SUPERB profiler's convention: the sum over its 32 LibriSpeech utterances."""
    return sum(count_macs(config, num_samples=n).total for n in SUPERB_UTTERANCE_SAMPLES)


def macs_in_convention(config: EncoderConfig, convention: str, seconds: float = REFERENCE_SECONDS) -> int:
    """MACs of `config` as `convention` quotes them (see MACS_CONVENTIONS)."""
    if convention == "superb":
        return count_macs_superb(config)
    if convention == "seconds":
        return count_macs(config, seconds=seconds).total
    raise ValueError(f"unknown MACs convention {convention!r}; expected one of {MACS_CONVENTIONS}")


# ---- reference: FlopCounterMode on the built model ------------------------------------------------------------
@contextlib.contextmanager
def exact_counting():
    """Math SDPA and the MHA fast path off: FlopCounterMode has no formula for the fused CPU kernels."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _run_counted(model: nn.Module, num_samples: int):
    from torch.utils.flop_counter import FlopCounterMode

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    device = _model_device(model)
    if device.type == "meta":
        waveform = torch.zeros(1, num_samples, device=device)
    else:
        waveform = torch.randn(1, num_samples, generator=torch.Generator().manual_seed(0)).to(device)
    training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), exact_counting(), counter:
            model(waveform)
    finally:
        model.train(training)
    return counter


def count_macs_of_model(model: nn.Module, num_samples: int) -> int:
    """MACs of one forward pass over one waveform, measured by `FlopCounterMode` (FLOPs / 2).

    Runs on the model's device; a model built on the meta device is counted without computing anything.
    """
    return _run_counted(model, num_samples).get_total_flops() // 2


def count_macs_by_module(model: nn.Module, num_samples: int) -> dict[str, int]:
    """Measured MACs per module, keyed by the module's name in `model.named_modules()` ("" for the whole model).

    A module that ran no counted op is absent.
    """
    counts = _run_counted(model, num_samples).get_flop_counts()
    root = type(model).__name__  # FlopCounterMode names modules "<RootClass>.<qualified name>"
    result = {}
    for name, ops in counts.items():
        if name == "Global":
            continue
        key = "" if name == root else name.removeprefix(root + ".")
        result[key] = sum(ops.values()) // 2
    return result


def measure_mac_breakdown(model: nn.Module, num_samples: int) -> MacBreakdown:
    """A `SpeechEncoder`'s measured MACs (FlopCounterMode), grouped into the parts of `MacBreakdown`.

    The attention matmuls are what a layer's attention module counts beyond its linears (they are functional).
    """
    measured = count_macs_by_module(model, num_samples)

    def get(name: str) -> int:
        return measured.get(name, 0)

    parts = MacBreakdown(
        cnn=get("feature_extractor"),
        feature_projection=get("feature_projection"),
        positional_conv=get("pos_conv"),
    )
    for i, _ in enumerate(model.layers):
        attention = f"layers.{i}.attention"
        projections = sum(get(f"{attention}.{n}_proj") for n in ("q", "k", "v", "out"))
        gate = get(f"{attention}.gru_rel_pos_linear")
        parts.attention_projections += projections
        parts.relative_position_gate += gate
        parts.attention_matmuls += get(attention) - projections - gate
        parts.ffn += get(f"layers.{i}.feed_forward")
    unassigned = get("") - parts.total
    if unassigned:
        raise RuntimeError(f"{unassigned} measured MACs belong to no known part of the encoder")
    return parts
