"""Architecture configs: every size in the encoder, per layer, as plain JSON-serialisable dataclasses.

A saved student is rebuilt exactly from its `EncoderConfig` (see `builders.build_encoder`), so every shape the
compression operators can change lives here rather than in module attributes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

FAMILIES = ("hubert", "wav2vec2", "wavlm")
EXTRACTOR_NORMS = ("group", "layer")
LINEAR_NAMES = ("q", "k", "v", "out", "fc1", "fc2")


@dataclass
class ConvLayerSpec:
    """One layer of the convolutional feature extractor (waveform -> frames)."""

    channels: int
    kernel: int
    stride: int


@dataclass
class LayerSpec:
    """One Transformer layer.

    `ranks` maps a linear's name (q, k, v, out, fc1, fc2) to the rank of its low-rank factorisation; a linear not
    named is full rank. `heads` 0 removes the layer's attention block and `ffn_dim` 0 its FFN block (see
    `components.EncoderLayer`). `head_index` says which teacher head each kept head came from; WavLM needs it to pick the
    slice of the input that gates a head's relative position bias and that head's row of the shared bias table.
    """

    heads: int
    ffn_dim: int
    ranks: dict[str, int] = field(default_factory=dict)
    head_index: list[int] | None = None

    def head_sources(self) -> list[int]:
        return list(self.head_index) if self.head_index is not None else list(range(self.heads))


@dataclass
class RelativePositionSpec:
    """WavLM's bucketed relative position bias, shared by all layers, with a learned gate per layer."""

    num_buckets: int = 320
    max_distance: int = 800
    heads: int = 12  # rows of the shared bias table (the teacher's head count)


@dataclass
class EncoderConfig:
    family: str
    conv_layers: list[ConvLayerSpec]
    embed_dim: int
    head_dim: int
    layers: list[LayerSpec]
    extractor_norm: str = "group"  # "group": GroupNorm on the first conv (base); "layer": LayerNorm on every conv
    conv_bias: bool = False
    layer_norm_first: bool = False  # pre-LN ("stable layer norm", large models) vs post-LN (base models)
    projection_layer_norm: bool = True
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    layer_norm_eps: float = 1e-5
    relative_position: RelativePositionSpec | None = None
    dropout: float = 0.0
    # A thin (hidden-width) student: the teacher's residual channel each of its channels came from. WavLM's gate
    # reads a head's slice of the teacher-width stream, so the student puts its channels back there (pruned ones
    # read as zero); distillation heads start by placing them there too. None: channels 0..embed_dim-1.
    residual_index: list[int] | None = None

    # ---- derived sizes -------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def conv_out_channels(self) -> int:
        return self.conv_layers[-1].channels

    def residual_sources(self) -> list[int]:
        return list(self.residual_index) if self.residual_index is not None else list(range(self.embed_dim))

    def frames_for(self, num_samples: int) -> int:
        """Frames the conv front end emits for `num_samples` input samples."""
        length = num_samples
        for conv in self.conv_layers:
            length = (length - conv.kernel) // conv.stride + 1
        return max(length, 0)

    # ---- validation --------------------------------------------------------------------------------------
    def validate(self) -> EncoderConfig:
        problems = []
        if self.family not in FAMILIES:
            problems.append(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.extractor_norm not in EXTRACTOR_NORMS:
            problems.append(f"extractor_norm must be one of {EXTRACTOR_NORMS}, got {self.extractor_norm!r}")
        if not self.conv_layers:
            problems.append("conv_layers must not be empty")
        for i, conv in enumerate(self.conv_layers):
            if conv.channels < 1 or conv.kernel < 1 or conv.stride < 1:
                problems.append(f"conv layer {i}: channels, kernel and stride must be >= 1")
        if self.embed_dim % self.pos_conv_groups:
            problems.append(f"embed_dim {self.embed_dim} must be divisible by pos_conv_groups {self.pos_conv_groups}")
        for i, layer in enumerate(self.layers):
            if layer.heads < 0 or layer.ffn_dim < 0:
                problems.append(f"layer {i}: heads and ffn_dim must be >= 0")
            for name, rank in layer.ranks.items():
                removed = (layer.heads == 0 and name in LINEAR_NAMES[:4]) or (layer.ffn_dim == 0 and name in ("fc1", "fc2"))
                if name not in LINEAR_NAMES:
                    problems.append(f"layer {i}: unknown linear {name!r} in ranks (expected {LINEAR_NAMES})")
                elif removed:
                    problems.append(f"layer {i}: a rank for {name}, whose block is removed (0 heads or 0 FFN units)")
                elif rank < 1:
                    problems.append(f"layer {i}: rank of {name} must be >= 1, got {rank}")
            if layer.head_index is not None and len(layer.head_index) != layer.heads:
                problems.append(f"layer {i}: head_index has {len(layer.head_index)} entries for {layer.heads} heads")
            if self.relative_position is not None:
                bad = [h for h in layer.head_sources() if not 0 <= h < self.relative_position.heads]
                if bad:
                    problems.append(f"layer {i}: head_index {bad} outside the relative position table")
        sources = self.residual_sources()
        # The teacher's residual width: known to WavLM's relative position table, unbounded otherwise.
        width = self.relative_position.heads * self.head_dim if self.relative_position is not None else None
        if len(sources) != self.embed_dim or any(b <= a for a, b in zip(sources, sources[1:])) or not all(
            0 <= c and (width is None or c < width) for c in sources
        ):
            problems.append(f"residual_index must be {self.embed_dim} increasing teacher channels")
        if problems:
            raise ValueError("invalid encoder config: " + "; ".join(problems))
        return self

    # ---- (de)serialisation -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict) -> EncoderConfig:
        data = dict(data)
        data["conv_layers"] = [ConvLayerSpec(**c) for c in data["conv_layers"]]
        data["layers"] = [LayerSpec(**layer) for layer in data["layers"]]
        if data.get("relative_position") is not None:
            data["relative_position"] = RelativePositionSpec(**data["relative_position"])
        return cls(**data).validate()

    @classmethod
    def from_json(cls, text: str) -> EncoderConfig:
        return cls.from_dict(json.loads(text))

    def copy(self) -> EncoderConfig:
        return EncoderConfig.from_dict(self.to_dict())
