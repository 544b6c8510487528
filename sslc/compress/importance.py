"""Importance scores that decide which heads, FFN units, conv channels and layers a student keeps.

Weight scores (L1) need only the teacher. Data scores need a few batches `(waveforms [B, S], lengths [B])`:

* "data": |activation x gradient| of the distillation loss, after Michel et al. (2019). The loss of an
  uncompressed teacher against itself is exactly zero (so is its gradient), so we score the teacher's hidden
  states on *masked* input against its clean hidden states: ~10% of the frames, in spans of 10, are zeroed after
  the feature projection (HuBERT-style masking, seeded). Heads, units and channels that carry the context needed
  to fill the masked frames then get large scores.
* "diagonal": the share of each head's attention mass within 2 frames of the diagonal (diagonal heads matter).
* "hidden-data": each residual channel's mean |activation| over the residual stream (every hidden state, real
  frames), as structured LLM pruning scores embedding channels (Minitron); "hidden-l1" is the data-free fallback.
* "layer": the mean relative size ||layer(x) - x|| / ||x|| of each layer's residual update over real frames;
  a layer that barely changes its input is the cheapest to drop.

Data scores are cached on disk per (teacher, data, method) by `importance_scores`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from sslc.losses import distillation_loss

from .cache import ImportanceCache, data_fingerprint, model_fingerprint
from .config import ConfigError

MASK_RATIO = 0.1  # share of frames masked when scoring with data
MASK_SPAN = 10  # frames per masked span (HuBERT's mask length)
DIAGONAL_BAND = 2  # |query - key| <= this many frames counts as "near the diagonal"
METHODS = ("head-l1", "head-data", "head-diagonal", "ffn-l1", "ffn-data", "conv-l1", "conv-data", "hidden-l1",
           "hidden-data", "layer")

Batch = tuple[torch.Tensor, "torch.Tensor | None"]


# ---- input handling -------------------------------------------------------------------------------------------
def as_batches(data: Iterable) -> list[Batch]:
    """Materialise scoring data (it may be a one-shot iterator) as a list of (waveforms, lengths) batches."""
    usage = "scoring data must be an iterable of (waveforms [B, S] float tensor, lengths [B] or None) batches"
    if data is None or isinstance(data, torch.Tensor):
        raise ConfigError(usage)
    batches = []
    for item in data:
        if isinstance(item, torch.Tensor):
            waveforms, lengths = item, None
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            waveforms, lengths = item
        else:
            raise ConfigError(usage)
        if (
            not isinstance(waveforms, torch.Tensor)
            or waveforms.dim() != 2
            or not waveforms.is_floating_point()
        ):
            raise ConfigError(usage)
        if lengths is not None and (
            not isinstance(lengths, torch.Tensor) or lengths.shape != waveforms.shape[:1]
        ):
            raise ConfigError(usage)
        batches.append((waveforms, lengths))
    if not batches:
        raise ConfigError("scoring data is empty; pass a few batches of audio")
    return batches


def _frame_mask(teacher, waveforms: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """[B, T] True on the frames that come from real (non-padding) samples."""
    frames = teacher.config.frames_for(waveforms.shape[1])
    if lengths is None:
        return torch.ones(waveforms.shape[0], frames, dtype=torch.bool, device=waveforms.device)
    frame_lengths = teacher.feature_extractor.output_lengths(lengths.to(waveforms.device))
    return torch.arange(frames, device=waveforms.device)[None, :] < frame_lengths[:, None]


@contextlib.contextmanager
def _scoring_mode(teacher: nn.Module):
    """Eval mode (no dropout) for the duration, restoring the caller's mode afterwards."""
    was_training = teacher.training
    teacher.eval()
    try:
        yield
    finally:
        teacher.train(was_training)


def _device(teacher: nn.Module) -> torch.device:
    return next(teacher.parameters()).device


def _normalise(scores: list[torch.Tensor]) -> list[torch.Tensor]:
    # Per-layer L2 normalisation (Michel et al.): makes layers comparable without changing in-layer ranking.
    return [s / s.norm() if s.norm() > 0 else s for s in scores]


# ---- weight (L1) scores --------------------------------------------------------------------------------------
@torch.no_grad()
def head_scores_l1(teacher) -> list[torch.Tensor]:
    """Per layer, [heads]: L1 of each head's q/k/v rows (weights and biases) and out-projection columns."""
    scores = []
    for layer in teacher.layers:
        att = layer.attention
        heads, dim = att.heads, att.head_dim
        score = torch.zeros(heads)
        for proj in (att.q_proj, att.k_proj, att.v_proj):
            score += proj.weight.abs().view(heads, dim, -1).sum((1, 2)).cpu()
            if proj.bias is not None:
                score += proj.bias.abs().view(heads, dim).sum(1).cpu()
        score += att.out_proj.weight.abs().view(-1, heads, dim).sum((0, 2)).cpu()
        scores.append(score)
    return scores


@torch.no_grad()
def ffn_scores_l1(teacher) -> list[torch.Tensor]:
    """Per layer, [ffn_dim]: L1 of each unit's fc1 row, fc1 bias and fc2 column."""
    scores = []
    for layer in teacher.layers:
        ff = layer.feed_forward
        score = ff.fc1.weight.abs().sum(1) + ff.fc2.weight.abs().sum(0)
        if ff.fc1.bias is not None:
            score = score + ff.fc1.bias.abs()
        scores.append(score.cpu())
    return scores


@torch.no_grad()
def conv_scores_l1(teacher) -> list[torch.Tensor]:
    """Per CNN layer, [channels]: L1 of the channel's filter (and bias) plus of the weights reading it.

    The readers are the next conv's input slice, or the feature projection's input columns for the last conv;
    counting them matters because the norms after a conv rescale its filters away.
    """
    blocks = teacher.feature_extractor.blocks
    scores = []
    for i, block in enumerate(blocks):
        score = block.conv.weight.abs().sum((1, 2))
        if block.conv.bias is not None:
            score = score + block.conv.bias.abs()
        if i + 1 < len(blocks):
            score = score + blocks[i + 1].conv.weight.abs().sum((0, 2))
        else:
            score = score + teacher.feature_projection.projection.weight.abs().sum(0)
        scores.append(score.cpu())
    return scores


@torch.no_grad()
def hidden_scores_l1(teacher) -> list[torch.Tensor]:
    """[[embed_dim]]: per residual channel, L1 of every weight that writes it (feature projection, out
    projections, fc2, with biases) or reads it (q/k/v, fc1), plus its LayerNorm weights."""
    projection = teacher.feature_projection.projection
    score = projection.weight.abs().sum(1) + projection.bias.abs()
    for layer in teacher.layers:
        att, ff = layer.attention, layer.feed_forward
        for reader in (att.q_proj, att.k_proj, att.v_proj, ff.fc1):
            score = score + reader.weight.abs().sum(0)
        for writer in (att.out_proj, ff.fc2):
            score = score + writer.weight.abs().sum(1) + writer.bias.abs()
        score = score + layer.layer_norm.weight.abs() + layer.final_layer_norm.weight.abs()
    return [score.cpu()]


@torch.no_grad()
def hidden_scores_data(teacher, batches: list[Batch]) -> list[torch.Tensor]:
    """[[embed_dim]]: per residual channel, the mean over hidden states of its mean |activation| on real frames
    (each hidden state weighs the same, whatever its scale)."""
    device = _device(teacher)
    sums = None
    with _scoring_mode(teacher):
        for waveforms, lengths in batches:
            waveforms = waveforms.to(device)
            lengths = None if lengths is None else lengths.to(device)
            output = teacher(waveforms, lengths)
            real = _frame_mask(teacher, waveforms, lengths)[..., None].to(waveforms.dtype)
            per_state = torch.stack([(h.abs() * real).sum((0, 1)) for h in output.hidden_states]).double().cpu()
            sums = per_state if sums is None else sums + per_state
    means = sums / sums.mean(1, keepdim=True).clamp_min(1e-12)  # each hidden state normalised to mean 1
    return [means.mean(0).float()]


# ---- data scores --------------------------------------------------------------------------------------------
def span_mask(frame_mask: torch.Tensor, seed: int) -> torch.Tensor:
    """[B, T] True on the frames to zero: spans of MASK_SPAN frames covering ~MASK_RATIO of each utterance."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(frame_mask.shape, dtype=torch.bool)
    for b, real in enumerate(frame_mask.sum(1).tolist()):
        span = min(MASK_SPAN, real)
        if span == 0:
            continue
        spans = max(1, round(MASK_RATIO * real / MASK_SPAN))
        for start in torch.randint(0, real - span + 1, (spans,), generator=generator).tolist():
            mask[b, start : start + span] = True
    return mask.to(frame_mask.device)


def _masked_pass(
    teacher, waveforms, lengths, masked
) -> tuple[torch.Tensor, dict[tuple[str, int], torch.Tensor]]:
    """Forward the teacher with `masked` frames zeroed; returns (hidden states, captured activations).

    Activations: each layer's attention context ("head"), FFN hidden units ("ffn") and each conv block's output
    ("conv"), all still in the autograd graph.
    """
    captured: dict[tuple[str, int], torch.Tensor] = {}

    def capture(key):
        def hook(module, inputs, output):
            captured[key] = output

        return hook

    def zero_masked(module, inputs, output):
        return output.masked_fill(masked[..., None], 0.0)

    hooks = [teacher.feature_projection.register_forward_hook(zero_masked)]
    for i, layer in enumerate(teacher.layers):
        hooks.append(layer.attention.context.register_forward_hook(capture(("head", i))))
        hooks.append(layer.feed_forward.activation.register_forward_hook(capture(("ffn", i))))
    for i, block in enumerate(teacher.feature_extractor.blocks):
        hooks.append(block.register_forward_hook(capture(("conv", i))))
    try:
        # The input requires grad so the graph exists even when the teacher's parameters are frozen.
        output = teacher(waveforms.detach().clone().requires_grad_(True), lengths)
    finally:
        for handle in hooks:
            handle.remove()
    return output.hidden_states[1:], captured


def data_scores(teacher, batches: list[Batch], seed: int = 0, normalise: bool = True) -> dict[str, list[torch.Tensor]]:
    """{"head", "ffn", "conv"}: per-layer |activation x gradient| scores (see the module docstring), L2-normalised
    per layer unless `normalise` is False (raw, they compare across layers: `global_prune` ranks them so)."""
    device = _device(teacher)
    scores = {
        "head": [torch.zeros(layer.attention.heads) for layer in teacher.layers],
        "ffn": [torch.zeros(layer.feed_forward.fc1.weight.shape[0]) for layer in teacher.layers],
        "conv": [torch.zeros(block.conv.out_channels) for block in teacher.feature_extractor.blocks],
    }
    with _scoring_mode(teacher), torch.enable_grad():
        for index, (waveforms, lengths) in enumerate(batches):
            waveforms = waveforms.to(device)
            lengths = None if lengths is None else lengths.to(device)
            frame_mask = _frame_mask(teacher, waveforms, lengths)
            with torch.no_grad():
                targets = teacher(waveforms, lengths).hidden_states[1:]
            hidden, captured = _masked_pass(teacher, waveforms, lengths, span_mask(frame_mask, seed + index))
            loss, _ = distillation_loss(hidden, targets, frame_mask)
            keys = list(captured)
            grads = torch.autograd.grad(loss, [captured[k] for k in keys], allow_unused=True)
            for (kind, i), grad in zip(keys, grads):
                if grad is None:
                    continue
                product = (captured[(kind, i)] * grad).detach()
                if kind == "head":  # [B, T, H*hd]: dot product over each head's dims, then |.|
                    per_head = product.view(*product.shape[:2], scores["head"][i].numel(), -1).sum(-1)
                    scores["head"][i] += per_head.abs().sum((0, 1)).cpu()
                elif kind == "ffn":  # [B, T, units]
                    scores["ffn"][i] += product.abs().sum((0, 1)).cpu()
                else:  # conv: [B, C, T]
                    scores["conv"][i] += product.abs().sum((0, 2)).cpu()
    return {kind: _normalise(per_layer) if normalise else per_layer for kind, per_layer in scores.items()}


@torch.no_grad()
def head_scores_diagonal(teacher, batches: list[Batch], band: int = DIAGONAL_BAND) -> list[torch.Tensor]:
    """Per layer, [heads]: mean share of attention mass within `band` frames of the diagonal (real queries)."""
    device = _device(teacher)
    attentions = [layer.attention for layer in teacher.layers]
    sums = [torch.zeros(att.heads, dtype=torch.float64) for att in attentions]
    queries = 0.0
    with _scoring_mode(teacher):
        for att in attentions:
            att.record_attention = True
        try:
            for waveforms, lengths in batches:
                waveforms = waveforms.to(device)
                lengths = None if lengths is None else lengths.to(device)
                output = teacher(waveforms, lengths)
                real = output.frame_mask()
                frames = output.hidden_states[0].shape[1]
                if real is None:
                    real = torch.ones(waveforms.shape[0], frames, dtype=torch.bool, device=device)
                position = torch.arange(frames, device=device)
                near = ((position[:, None] - position[None, :]).abs() <= band).to(waveforms.dtype)
                for total, att in zip(sums, attentions):
                    mass = (att.last_attention * near).sum(-1)  # [B, H, T]
                    total += (mass * real[:, None, :]).sum((0, 2)).double().cpu()
                queries += float(real.sum())
        finally:
            for att in attentions:
                att.record_attention, att.last_attention = False, None
    return [(total / max(queries, 1.0)).float() for total in sums]


def _residual_ratios(teacher, waveforms, lengths, real) -> torch.Tensor:
    """[layers]: sum over real frames of ||layer(x) - x|| / ||x|| for one batch."""
    sums = torch.zeros(len(teacher.layers), dtype=torch.float64)

    def measure(i):
        def hook(module, args, output):
            x = args[0]
            ratio = (output - x).norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-8)
            sums[i] += float((ratio * real).sum())

        return hook

    hooks = [layer.register_forward_hook(measure(i)) for i, layer in enumerate(teacher.layers)]
    try:
        teacher(waveforms, lengths)
    finally:
        for handle in hooks:
            handle.remove()
    return sums


@torch.no_grad()
def layer_scores(teacher, batches: list[Batch]) -> torch.Tensor:
    """[layers]: mean over real frames of ||layer(x) - x|| / ||x|| (the relative size of its residual update)."""
    device = _device(teacher)
    sums = torch.zeros(len(teacher.layers), dtype=torch.float64)
    frames = 0.0
    with _scoring_mode(teacher):
        for waveforms, lengths in batches:
            waveforms = waveforms.to(device)
            lengths = None if lengths is None else lengths.to(device)
            real = _frame_mask(teacher, waveforms, lengths)
            sums += _residual_ratios(teacher, waveforms, lengths, real)
            frames += float(real.sum())
    return (sums / max(frames, 1.0)).float()


# ---- dispatch and caching -----------------------------------------------------------------------------------
_WEIGHT_SCORES = {"head-l1": head_scores_l1, "ffn-l1": ffn_scores_l1, "conv-l1": conv_scores_l1,
                  "hidden-l1": hidden_scores_l1}


def importance_scores(
    teacher, method: str, data=None, cache: ImportanceCache | str | Path | None = None, seed: int = 0
):
    """Scores for `method` (one of METHODS): per-layer lists of tensors, or one tensor for "layer".

    Data methods need `data` (a list of batches; see `as_batches`); with `cache` (an `ImportanceCache` or a
    directory) their result is read from / written to disk. The head, FFN and conv "-data" methods share one
    computation.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown importance method {method!r}; expected one of {', '.join(METHODS)}")
    if method in _WEIGHT_SCORES:
        return _WEIGHT_SCORES[method](teacher)
    if data is None:
        raise ConfigError(f"{method} importance needs scoring data: pass data=[(waveforms, lengths), ...]")
    batches = as_batches(data)
    if method == "layer":
        key, compute = "layer-v1", lambda: layer_scores(teacher, batches)
    elif method == "hidden-data":
        key, compute = "hidden-v1", lambda: hidden_scores_data(teacher, batches)
    elif method == "head-diagonal":
        key, compute = f"diagonal-v1-band{DIAGONAL_BAND}", lambda: head_scores_diagonal(teacher, batches)
    else:
        key = f"data-v1-mask{MASK_RATIO}x{MASK_SPAN}-seed{seed}"
        compute = lambda: data_scores(teacher, batches, seed)  # noqa: E731
    if cache is None:
        scores = compute()
    else:
        cache = cache if isinstance(cache, ImportanceCache) else ImportanceCache(cache)
        model_key, data_key = model_fingerprint(teacher), data_fingerprint(batches)
        scores = cache.get(model_key, data_key, key)
        if scores is None:
            scores = compute()
            cache.put(model_key, data_key, key, scores)
    return scores[method.split("-")[0]] if isinstance(scores, dict) else scores
