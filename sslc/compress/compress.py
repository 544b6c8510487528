"""`compress(teacher, config)`: build the student a `CompressionConfig` describes, with the teacher's weights.

Order: depth (keep the chosen layers) -> heads and FFN units (ranked on the teacher's layer) -> CNN channels
-> hidden (residual) channels -> low-rank factorisation of the sliced linears -> unstructured sparsity -> int8. The structured steps slice
the teacher's state dict; the student is then built empty from its `EncoderConfig` and loaded strictly, so the
config rebuilds it exactly (any shape mismatch is an error here, not a silent difference).
"""

from __future__ import annotations

import torch
from torch import nn

from sslc.models import EncoderConfig, SpeechEncoder, build_encoder

from . import lowrank, slicing
from .cache import ImportanceCache
from .config import CompressionConfig
from .importance import as_batches, importance_scores
from .quantize import quantize_int8
from .sparsity import magnitude_prune_

_LINEAR_PATHS = {
    "q": "attention.q_proj",
    "k": "attention.k_proj",
    "v": "attention.v_proj",
    "out": "attention.out_proj",
    "fc1": "feed_forward.fc1",
    "fc2": "feed_forward.fc2",
}


def _kept(teacher, method: str, sizes: list[int], full: list[int], entries: list[int], data, cache):
    """Per entry, the indices to keep: everything when nothing is pruned (no scores needed), else the top-k.

    `entries` picks the teacher layers (or conv layers) whose scores rank each entry.
    """
    if all(size == total for size, total in zip(sizes, full)):
        return [torch.arange(total) for total in full]
    all_scores = importance_scores(teacher, method, data, cache)  # for the whole teacher: one cache entry
    scores = [all_scores[e] for e in entries]
    return [
        torch.arange(total) if size == total else slicing.top_k(s, size)
        for s, size, total in zip(scores, sizes, full)
    ]


def _kept_residual(teacher, criterion: str, width: int, data, cache) -> torch.Tensor:
    """The `width` residual channels to keep, the same count from each positional-conv group (so the grouped
    conv keeps equal groups)."""
    (scores,) = importance_scores(teacher, f"hidden-{criterion}", data, cache)
    return slicing.top_k_per_group(scores, width, teacher.config.pos_conv_groups)


def slice_student(
    state: dict[str, torch.Tensor],
    spec: EncoderConfig,
    config: CompressionConfig,
    heads: list[torch.Tensor],
    units: list[torch.Tensor],
    channels: list[torch.Tensor],
    residual: torch.Tensor | None,
) -> SpeechEncoder:
    """The float student (before sparsity and int8) that `config` describes, sliced from `state`, a state dict in
    the layout of the teacher `spec`, keeping the given indices (ascending, per kept layer / conv layer; `residual`:
    the kept residual channels, the same count per positional-conv group, or None for the full width).

    `compress` passes the teacher's own state and its top-k indices; an elastic student passes its shared weights
    put back in the teacher's layout and its importance prefixes (`sslc.compress.elastic`).
    """
    arch = config.student_architecture(spec)
    teacher_layers = [spec.layers[t] for t in config.layers]
    state = slicing.keep_layers(state, config.layers)
    for i, (student_layer, teacher_layer) in enumerate(zip(arch.layers, teacher_layers)):
        slicing.keep_heads(state, f"layers.{i}.attention.", heads[i], spec.head_dim)
        slicing.keep_units(state, f"layers.{i}.feed_forward.", units[i])
        slicing.drop_removed_blocks(state, i, student_layer.heads, student_layer.ffn_dim, spec.layer_norm_first)
        if spec.relative_position is not None:  # WavLM: which teacher head (gate slice, bias row) each one is
            sources = teacher_layer.head_sources()
            student_layer.head_index = [sources[h] for h in heads[i].tolist()]
    slicing.keep_channels(state, channels)
    if residual is not None:
        slicing.keep_hidden(state, residual, spec.pos_conv_groups)
        sources = spec.residual_sources()  # WavLM's gate reads the kept channels at their teacher positions
        arch.residual_index = [sources[c] for c in residual.tolist()]
    for i, student_layer in enumerate(arch.layers):  # factorise the sliced linears
        for name, rank in student_layer.ranks.items():
            lowrank.factorize_state(state, f"layers.{i}.{_LINEAR_PATHS[name]}.", rank)
    student = build_encoder(arch.validate())
    student.load_state_dict(state, strict=True)
    return student


def compress(
    teacher: SpeechEncoder,
    config: CompressionConfig,
    data=None,
    cache_dir: str | ImportanceCache | None = None,
) -> nn.Module:
    """The student of `teacher` that `config` describes, in eval mode.

    data: a few `(waveforms [B, S], lengths [B])` batches, needed only by the "data" and "diagonal" importance
    methods (a `ConfigError` says so when they are missing). cache_dir: where importance scores are cached.
    Returns a `SpeechEncoder` whose `.config` equals `config.student_architecture(teacher.config)` except for
    WavLM's `head_index` and `residual_index`; with quantize="int8" it is the dynamically quantized copy (on CPU) of that model.
    """
    spec = teacher.config
    config.validate(spec)
    if data is not None:
        data = as_batches(data)  # once: it may be a one-shot iterator, and up to three scores read it
    teacher_layers = [spec.layers[t] for t in config.layers]
    conv_full = [c.channels for c in spec.conv_layers]
    # (what is pruned, its importance criterion, kept sizes, full sizes, which teacher entries rank them)
    plans = [
        ("head", config.head_importance, config.heads, [s.heads for s in teacher_layers], config.layers),
        ("ffn", config.ffn_importance, config.ffn, [s.ffn_dim for s in teacher_layers], config.layers),
        ("conv", config.conv_importance, config.conv_channels, conv_full, list(range(len(conv_full)))),
    ]
    heads, units, channels = (
        _kept(teacher, f"{kind}-{criterion}", sizes, full, entries, data, cache_dir)
        for kind, criterion, sizes, full, entries in plans
    )

    width = config.width(spec)
    residual = None
    if width < spec.embed_dim:
        residual = _kept_residual(teacher, config.hidden_importance, width, data, cache_dir)
    parameter = next(teacher.parameters())
    student = slice_student(teacher.state_dict(), spec, config, heads, units, channels, residual)
    student.to(device=parameter.device, dtype=parameter.dtype).eval()
    if config.sparsity > 0:
        magnitude_prune_(student, config.sparsity)
    if config.quantize == "int8":
        student = quantize_int8(student)
    return student
