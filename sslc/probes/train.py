"""Probing one frozen encoder: encode the audio once, train the head on the training share, score the held-out.

The encoder runs in inference mode and its hidden states, normalised once (`normalize_states`), are kept (float16,
on the CPU) when they fit in `cache_bytes`, so the head's epochs cost no encoder forward passes and no
normalisation; otherwise every epoch encodes again. Each
file is encoded alone, unpadded: padding would change a group-normed CNN front end's output.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from sslc.data.audio import load_audio

from .labels import Example
from .model import ClassifyProbe, CTCProbe, edit_distance, greedy_ctc_decode, normalize_states

# hidden states of one waveform [1, S] -> list of [1, T, D] (the encoder's input-to-layer-0 state first)
Encode = Callable[[torch.Tensor], Sequence[torch.Tensor]]
CACHE_BYTES = 4 << 30


@dataclass(frozen=True)
class ProbeSettings:
    task: str
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-2  # measured here: at 2e-3 a linear CTC head stayed in the all-blank phase for many epochs
    seed: int = 0
    device: str = "cpu"


@dataclass
class ProbeOutcome:
    metric_name: str  # "error_rate" (ctc, lower is better) or "accuracy" (classify, higher is better)
    metric: float
    train_files: int
    heldout_files: int
    layer_weights: list[float]
    train_loss: float
    seconds: float
    curve: list[float] = field(default_factory=list)  # mean training loss per epoch


class _Progress:
    """What the loop reports to: `stage(name, total)` then `advance()`; the default draws nothing."""

    def stage(self, name: str, total: int) -> None: ...

    def advance(self) -> None: ...


class _States:
    """Normalised hidden states [L, T, D] of each example (`normalize_states`, what the probe mixes): computed once
    and kept, or recomputed on every pass."""

    def __init__(self, encode: Encode, examples: Sequence[Example], keep: bool, progress: _Progress, what: str):
        self.encode, self.examples, self.keep = encode, list(examples), keep
        self.kept: list[torch.Tensor] | None = None
        if keep:
            progress.stage(f"encoding {what}", len(self.examples))
            self.kept = []
            for example in self.examples:
                self.kept.append(self._encode(example).to(torch.float16))
                progress.advance()

    @torch.inference_mode()
    def _encode(self, example: Example) -> torch.Tensor:
        wave = torch.from_numpy(load_audio(example.audio.path))[None, :]
        return normalize_states(torch.stack([h[0].float().cpu() for h in self.encode(wave)]))

    def get(self, index: int) -> torch.Tensor:
        return self.kept[index] if self.kept is not None else self._encode(self.examples[index])


def _batches(count: int, batch_size: int, generator: torch.Generator | None) -> list[list[int]]:
    order = torch.randperm(count, generator=generator).tolist() if generator is not None else list(range(count))
    return [order[i: i + batch_size] for i in range(0, count, batch_size)]


def _collate(states: _States, indices: list[int], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    items = [states.get(i) for i in indices]
    lengths = torch.tensor([s.shape[1] for s in items])
    layers, _, dim = items[0].shape
    batch = torch.zeros(layers, len(items), int(lengths.max()), dim)
    for row, item in enumerate(items):
        batch[:, row, : item.shape[1]] = item.float()
    return batch.to(device), lengths.to(device)


def estimate_state_bytes(examples: Sequence[Example], num_states: int, dim: int, frames_for) -> int:
    return sum(frames_for(e.audio.num_samples) for e in examples) * num_states * dim * 2


def run_probe(
    encode: Encode,
    num_states: int,
    dim: int,
    train: Sequence[Example],
    heldout: Sequence[Example],
    settings: ProbeSettings,
    keep_states: bool = True,
    progress: _Progress | None = None,
) -> ProbeOutcome:
    """Train a probe head on `train` over the frozen encoder behind `encode`; score it on `heldout`."""
    progress = progress or _Progress()
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    ctc = settings.task == "ctc"
    if ctc:
        units = sorted({u for e in train for u in e.label})
        index = {u: i + 1 for i, u in enumerate(units)}  # 0 is the CTC blank
        probe = CTCProbe(num_states, dim, len(units))
    else:
        units = sorted({e.label for e in train})
        index = {u: i for i, u in enumerate(units)}
        probe = ClassifyProbe(num_states, dim, len(units))
    probe.to(settings.device)
    optimizer = torch.optim.Adam(probe.parameters(), lr=settings.lr)
    train_states = _States(encode, train, keep_states, progress, "training audio")
    heldout_states = _States(encode, heldout, keep_states, progress, "held-out audio")

    batches_per_epoch = math.ceil(len(train) / settings.batch_size)
    progress.stage("training the probe", settings.epochs * batches_per_epoch)
    curve = []
    for _ in range(settings.epochs):
        probe.train()
        losses = []
        for chosen in _batches(len(train), settings.batch_size, generator):
            states, lengths = _collate(train_states, chosen, settings.device)
            out = probe(states, lengths)
            if ctc:
                targets = [torch.tensor([index[u] for u in train[i].label]) for i in chosen]
                loss = F.ctc_loss(
                    out.transpose(0, 1), torch.cat(targets).to(settings.device), lengths,
                    torch.tensor([len(t) for t in targets], device=settings.device), blank=0,
                    zero_infinity=True,  # an utterance with more units than frames is ignored, not infinite
                )
            else:
                loss = F.cross_entropy(out, torch.tensor([index[train[i].label] for i in chosen],
                                                         device=settings.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            progress.advance()
        curve.append(float(np.mean(losses)))

    metric = _evaluate(probe, heldout_states, heldout, units, ctc, settings)
    return ProbeOutcome(
        metric_name="error_rate" if ctc else "accuracy", metric=metric, train_files=len(train),
        heldout_files=len(heldout), layer_weights=[round(w, 4) for w in probe.mix.weights.tolist()],
        train_loss=curve[-1], seconds=time.perf_counter() - started, curve=curve,
    )


@torch.no_grad()
def _evaluate(probe, states: _States, heldout: Sequence[Example], units: list[str], ctc: bool,
              settings: ProbeSettings) -> float:
    probe.eval()
    count = total = 0  # ctc: edit operations over reference units; classify: correct files over files
    for chosen in _batches(len(heldout), settings.batch_size, None):
        batch, lengths = _collate(states, chosen, settings.device)
        out = probe(batch, lengths)
        if ctc:
            for i, hypothesis in zip(chosen, greedy_ctc_decode(out, lengths)):
                reference = heldout[i].label
                count += edit_distance([units[u - 1] for u in hypothesis], reference)
                total += len(reference)
        else:
            predicted = out.argmax(dim=-1).tolist()
            count += sum(units[p] == heldout[i].label for i, p in zip(chosen, predicted))
            total += len(chosen)
    return count / max(total, 1)
