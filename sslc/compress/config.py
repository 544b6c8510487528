"""`CompressionConfig`: what a student keeps of its teacher, as a JSON-serialisable dataclass.

The config holds sizes only (which layers, how many heads / FFN units / conv channels, which ranks) plus the
names of the importance scores that choose *which* heads, units and channels are kept. Sizes alone fix the
student's architecture, so `student_architecture` gives the analytic MACs and parameters of a candidate before
any weight is touched; `compress` then builds a model whose config has exactly those sizes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from sslc.errors import UserError
from sslc.models import ConvLayerSpec, EncoderConfig, LayerSpec

QUANTIZE_MODES = ("none", "int8")
HEAD_IMPORTANCE = ("l1", "data", "diagonal")
FFN_IMPORTANCE = ("l1", "data")
CONV_IMPORTANCE = ("l1", "data")
HIDDEN_IMPORTANCE = ("l1", "data")
# Fields added after configs were first recorded: left out of `to_dict` at their defaults, so a config written
# before they existed keeps its identity (repeats of it are still recognised when a study resumes).
_LATER_FIELDS = {"hidden": None, "hidden_importance": "l1"}
ATTENTION_LINEARS = ("q", "k", "v", "out")
FFN_LINEARS = ("fc1", "fc2")
_PER_LAYER = ("heads", "ffn", "attn_rank", "ffn_rank")


class ConfigError(UserError):
    """A compression config that does not fit its teacher (or is malformed); the message is one line."""


def break_even_rank(in_features: int, out_features: int) -> int:
    """Largest rank at which a low-rank factorisation costs no more MACs/params than the dense linear.

    Ranks up to min(in, out) are valid, but above in*out/(in+out) the two thin linears cost more than the
    dense one; a search space should stay at or below this value.
    """
    return (in_features * out_features) // (in_features + out_features)


def hidden_width(share: float, teacher: EncoderConfig) -> int:
    """A share of the teacher's hidden width, rounded to a multiple of its positional conv's groups (the widths
    a `hidden` config can have)."""
    groups = teacher.pos_conv_groups
    return max(groups, min(teacher.embed_dim, round(share * teacher.embed_dim / groups) * groups))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class CompressionConfig:
    """What the student keeps: one entry per kept layer in `heads`, `ffn`, `attn_rank`, `ffn_rank`.

    layers: teacher layer indices kept, strictly increasing (student depth = len(layers)).
    heads / ffn: attention heads / FFN units kept in each kept layer; 0 removes the layer's attention / FFN block
        (DPHuBERT's block removal: the block adds nothing to the residual; see `sslc.models.components`).
    attn_rank: rank of q, k, v and out of that layer (None = full rank); ffn_rank: rank of fc1 and fc2.
        Any rank in 1..min(in, out) is accepted, but one above `break_even_rank` costs more than full rank.
    conv_channels: output channels kept in each CNN layer of the front end.
    sparsity: fraction of each kept Transformer linear's weights zeroed by magnitude (unstructured; the
        tensors stay dense, so it lowers the non-zero count but not MACs or latency).
    quantize: "none" or "int8" (dynamic quantization of the linears, for CPU inference).
    head_importance / ffn_importance / conv_importance: the score that ranks heads / units / channels.
    hidden: the student's hidden (residual) width, a multiple of the teacher's positional-conv groups so the
        grouped conv keeps equal groups (None = the teacher's width). Head dim is kept: heads * head_dim is
        the attention's inner width whatever the hidden width.
    hidden_importance: the score that ranks residual channels ("l1": weights that read and write each
        channel; "data": its mean activation magnitude over the residual stream).
    """

    layers: list[int]
    heads: list[int]
    ffn: list[int]
    attn_rank: list[int | None]
    ffn_rank: list[int | None]
    conv_channels: list[int]
    sparsity: float = 0.0
    quantize: str = "none"
    head_importance: str = "l1"
    ffn_importance: str = "l1"
    conv_importance: str = "l1"
    hidden: int | None = None
    hidden_importance: str = "l1"

    # ---- constructors ------------------------------------------------------------------------------------
    @classmethod
    def keep_layers(cls, teacher: EncoderConfig, layers: list[int]) -> CompressionConfig:
        """Keep the given teacher layers at full size (and the whole front end)."""
        layers = list(layers)
        bad = [t for t in layers if not (_is_int(t) and 0 <= t < teacher.num_layers)]
        if bad:  # checked here because the full sizes below are read from these layers
            raise ConfigError(_unknown_layers(bad, teacher))
        return cls(
            layers=layers,
            heads=[teacher.layers[t].heads for t in layers],
            ffn=[teacher.layers[t].ffn_dim for t in layers],
            attn_rank=[None] * len(layers),
            ffn_rank=[None] * len(layers),
            conv_channels=[conv.channels for conv in teacher.conv_layers],
        )

    @classmethod
    def identity(cls, teacher: EncoderConfig) -> CompressionConfig:
        """Keep everything: the student equals the teacher."""
        return cls.keep_layers(teacher, list(range(teacher.num_layers)))

    @classmethod
    def first_n(cls, teacher: EncoderConfig, n: int) -> CompressionConfig:
        """Keep the first n layers (the lower layers feed all the others)."""
        _check_depth(teacher, n)
        return cls.keep_layers(teacher, list(range(n)))

    @classmethod
    def evenly_spaced(cls, teacher: EncoderConfig, n: int) -> CompressionConfig:
        """Keep n layers spread over the depth, always including the last one (e.g. 12 -> 4: 2, 5, 8, 11)."""
        _check_depth(teacher, n)
        total = teacher.num_layers
        return cls.keep_layers(teacher, [round((k + 1) * total / n) - 1 for k in range(n)])

    @classmethod
    def by_importance(cls, teacher, n: int, data, cache_dir=None) -> CompressionConfig:
        """Keep the n layers of `teacher` (a model) with the largest residual updates on `data`, in order.

        See `importance.layer_scores`; the scores are cached on disk when `cache_dir` is given.
        """
        from .importance import importance_scores  # import here: importance imports this module

        _check_depth(teacher.config, n)
        scores = importance_scores(teacher, "layer", data, cache_dir)
        top = sorted(range(len(scores)), key=lambda t: (-float(scores[t]), t))[:n]
        return cls.keep_layers(teacher.config, sorted(top))

    # ---- validation --------------------------------------------------------------------------------------
    def structure_problems(self) -> list[str]:
        """Problems that need no teacher: field types, list lengths, option names."""
        problems = []
        for name in ("layers", *_PER_LAYER, "conv_channels"):
            value = getattr(self, name)
            allow_none = name in ("attn_rank", "ffn_rank")
            if not isinstance(value, list) or not all(
                _is_int(v) or (allow_none and v is None) for v in value
            ):
                kind = "integers or null" if allow_none else "integers"
                problems.append(f"{name} must be a list of {kind}, got {value!r}")
        if problems:
            return problems
        if not self.layers:
            problems.append("layers must not be empty (the student needs at least one layer)")
        elif any(b <= a for a, b in zip(self.layers, self.layers[1:])):
            problems.append(f"layers must be strictly increasing teacher layer indices, got {self.layers}")
        for name in _PER_LAYER:
            if len(getattr(self, name)) != len(self.layers):
                problems.append(
                    f"{name} needs one entry per kept layer ({len(self.layers)}), "
                    f"got {len(getattr(self, name))}"
                )
        sparsity_ok = isinstance(self.sparsity, (int, float)) and not isinstance(self.sparsity, bool)
        if not sparsity_ok or not 0.0 <= self.sparsity < 1.0:
            problems.append(f"sparsity must be a number in [0, 1), got {self.sparsity!r}")
        for name, allowed in (
            ("quantize", QUANTIZE_MODES),
            ("head_importance", HEAD_IMPORTANCE),
            ("ffn_importance", FFN_IMPORTANCE),
            ("conv_importance", CONV_IMPORTANCE),
            ("hidden_importance", HIDDEN_IMPORTANCE),
        ):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.hidden is not None and not (_is_int(self.hidden) and self.hidden >= 1):
            problems.append(f"hidden must be a positive integer or null, got {self.hidden!r}")
        return problems

    def needs_data(self) -> bool:
        """Whether `compress` needs scoring data: a data-driven criterion ranks something that is pruned (the
        criteria of sizes kept whole are not computed, but the check stays simple: by name only)."""
        criteria = (self.head_importance, self.ffn_importance, self.conv_importance, self.hidden_importance)
        return "data" in criteria or self.head_importance == "diagonal"

    def width(self, teacher: EncoderConfig) -> int:
        """The student's hidden width."""
        return teacher.embed_dim if self.hidden is None else self.hidden

    def problems(self, teacher: EncoderConfig) -> list[str]:
        """Every way this config does not fit `teacher` (empty when it is valid)."""
        problems = self.structure_problems()
        if problems:
            return problems
        bad = [t for t in self.layers if not 0 <= t < teacher.num_layers]
        if bad:
            return [_unknown_layers(bad, teacher)]
        width, groups = self.width(teacher), teacher.pos_conv_groups
        if not groups <= width <= teacher.embed_dim or width % groups:
            problems.append(
                f"hidden must be a multiple of {groups} (the positional conv's groups) in {groups}.."
                f"{teacher.embed_dim}, got {width}"
            )
        for i, t in enumerate(self.layers):
            spec = teacher.layers[t]
            where = f"layer {i}" if i == t else f"layer {i} (teacher layer {t})"
            if spec.ranks:
                problems.append(
                    f"{where}: the teacher layer is already low-rank; compress a full-rank teacher"
                )
            if not (spec.heads and spec.ffn_dim):
                problems.append(f"{where}: the teacher layer has a removed block; compress a teacher with all blocks")
            if not 0 <= self.heads[i] <= spec.heads:
                problems.append(f"{where}: heads must be 0..{spec.heads} (0 removes the attention block), "
                                f"got {self.heads[i]}")
            if not 0 <= self.ffn[i] <= spec.ffn_dim:
                problems.append(f"{where}: ffn must be 0..{spec.ffn_dim} (0 removes the FFN block), got {self.ffn[i]}")
            for name, rank, size in (("attn_rank", self.attn_rank[i], self.heads[i]), ("ffn_rank", self.ffn_rank[i],
                                                                                      self.ffn[i])):
                if size == 0 and rank is not None:
                    problems.append(f"{where}: {name} must be null where the block is removed, got {rank}")
            limits = (
                ("attn_rank", self.attn_rank[i], min(width, self.heads[i] * teacher.head_dim)),
                ("ffn_rank", self.ffn_rank[i], min(width, self.ffn[i])),
            )
            for name, rank, limit in limits:
                if rank is not None and limit and not 1 <= rank <= limit:
                    problems.append(
                        f"{where}: {name} must be 1..{limit} (the smaller dimension of the "
                        f"kept projection) or null for full rank, got {rank}"
                    )
        if len(self.conv_channels) != len(teacher.conv_layers):
            problems.append(
                f"conv_channels needs one entry per CNN layer ({len(teacher.conv_layers)}), "
                f"got {len(self.conv_channels)}"
            )
        else:
            for i, (kept, conv) in enumerate(zip(self.conv_channels, teacher.conv_layers)):
                if not 1 <= kept <= conv.channels:
                    problems.append(f"conv layer {i}: channels must be 1..{conv.channels}, got {kept}")
        return problems

    def validate(self, teacher: EncoderConfig) -> CompressionConfig:
        """Raise `ConfigError` (one line, every problem) unless this config fits `teacher`."""
        problems = self.problems(teacher)
        if problems:
            raise ConfigError("invalid compression config: " + "; ".join(problems))
        return self

    # ---- the student's architecture ------------------------------------------------------------------------
    def student_architecture(self, teacher: EncoderConfig) -> EncoderConfig:
        """The student's `EncoderConfig` from sizes alone (no weights, no importance scores).

        Everything the MACs and parameter counts depend on matches the model `compress` builds; only WavLM's
        `head_index` and `residual_index` (which teacher heads and channels were kept) are left to `compress`,
        since they depend on the scores.
        """
        self.validate(teacher)
        layers = []
        for i in range(len(self.layers)):
            ranks = {}
            if self.attn_rank[i] is not None:
                ranks.update(dict.fromkeys(ATTENTION_LINEARS, self.attn_rank[i]))
            if self.ffn_rank[i] is not None:
                ranks.update(dict.fromkeys(FFN_LINEARS, self.ffn_rank[i]))
            layers.append(LayerSpec(heads=self.heads[i], ffn_dim=self.ffn[i], ranks=ranks))
        conv_layers = [
            ConvLayerSpec(kept, conv.kernel, conv.stride)
            for kept, conv in zip(self.conv_channels, teacher.conv_layers)
        ]
        return dataclasses.replace(
            teacher.copy(), conv_layers=conv_layers, layers=layers, embed_dim=self.width(teacher)
        ).validate()

    # ---- (de)serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if all(out[name] == default for name, default in _LATER_FIELDS.items()):
            for name in _LATER_FIELDS:
                del out[name]
        return out

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict) -> CompressionConfig:
        """Parse a dict (e.g. from JSON); structural problems raise `ConfigError`."""
        if not isinstance(data, dict):
            raise ConfigError(f"a compression config must be a JSON object, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        unknown = sorted(set(data) - set(names))
        missing = [name for name in required if name not in data]
        if unknown or missing:
            parts = ([f"unknown field(s) {', '.join(unknown)}"] if unknown else []) + (
                [f"missing field(s) {', '.join(missing)}"] if missing else []
            )
            raise ConfigError("invalid compression config: " + "; ".join(parts))
        config = cls(**{name: list(v) if isinstance(v, tuple) else v for name, v in data.items()})
        problems = config.structure_problems()
        if problems:
            raise ConfigError("invalid compression config: " + "; ".join(problems))
        return config

    @classmethod
    def from_json(cls, text: str) -> CompressionConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"compression config is not valid JSON: {error}") from None
        return cls.from_dict(data)


def _check_depth(teacher: EncoderConfig, n: int) -> None:
    if not _is_int(n) or not 1 <= n <= teacher.num_layers:
        raise ConfigError(f"number of kept layers must be 1..{teacher.num_layers}, got {n!r}")


def _unknown_layers(bad: list, teacher: EncoderConfig) -> str:
    return (
        f"layers: unknown teacher layer index {', '.join(map(str, bad))} "
        f"(the teacher has {teacher.num_layers} layers: 0..{teacher.num_layers - 1})"
    )


def config_key(config: dict) -> str:
    """The identity of a config (a `CompressionConfig.to_dict()`): its dict, order-independent. The search spots
    repeats by it; the once-for-all trainer names its sampled configs by it."""
    return json.dumps(config, sort_keys=True)
