"""The fixed training material: one deterministic crop per file, decoded on demand and cached in memory."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sslc.data.audio import SAMPLE_RATE, load_audio
from sslc.data.corpus import AudioFile

DEFAULT_CACHE_BYTES = 512 * 1024**2


@dataclass(frozen=True)
class Segment:
    """A crop of one file: `num_samples` samples from `start`, both counted at 16 kHz."""

    path: Path
    start: int
    num_samples: int


def make_segments(files: Sequence[AudioFile], max_seconds: float, seed: int) -> list[Segment]:
    """One crop of at most `max_seconds` per file; shorter files are kept whole.

    Each file's start is drawn from a numpy Generator seeded by (seed, hash of the file's relative path), so a
    file's crop is the same whatever other files are in the corpus or in which order they come.
    """
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    max_len = int(max_seconds * SAMPLE_RATE)
    segments = []
    for f in files:
        if f.num_samples <= max_len:
            segments.append(Segment(f.path, 0, f.num_samples))
            continue
        file_id = int.from_bytes(hashlib.sha256(f.key.encode("utf-8")).digest()[:8], "big")
        rng = np.random.default_rng([seed, file_id])
        start = int(rng.integers(0, f.num_samples - max_len + 1))
        segments.append(Segment(f.path, start, max_len))
    return segments


class SegmentDataset:
    """Index -> float32 waveform of a segment.

    Crops are cached (least recently used evicted beyond `cache_bytes`): corpora in short trials are small,
    and decoding + resampling every step would dominate a CPU-bound trial.
    """

    def __init__(self, segments: Sequence[Segment], cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.segments = list(segments)
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.segments)

    @property
    def lengths(self) -> list[int]:
        """Segment lengths in samples, for the length-bucketing sampler."""
        return [s.num_samples for s in self.segments]

    def __getitem__(self, index: int) -> np.ndarray:
        wave = self._cache.get(index)
        if wave is not None:
            self._cache.move_to_end(index)
        else:
            seg = self.segments[index]
            # Raises AudioReadError if the file went bad since discovery.
            audio = load_audio(seg.path)
            # Copy so the cache holds only the crop, not the whole decoded file.
            wave = audio[seg.start : seg.start + seg.num_samples].copy()
            self._remember(index, wave)
        # A copy: callers may modify what they get without corrupting the cache.
        return wave.copy()

    def _remember(self, index: int, wave: np.ndarray) -> None:
        if wave.nbytes > self.cache_bytes:
            return
        self._cache[index] = wave
        self._cached_bytes += wave.nbytes
        while self._cached_bytes > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.nbytes


def collate(waves: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack waveforms into a right-zero-padded float batch [B, S] and their lengths [B] (int64)."""
    if len(waves) == 0:
        raise ValueError("collate needs at least one waveform")
    tensors = [torch.as_tensor(w, dtype=torch.float32).reshape(-1) for w in waves]
    lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.long)
    batch = torch.zeros(len(tensors), int(lengths.max()), dtype=torch.float32)
    for row, t in zip(batch, tensors):
        row[: t.shape[0]] = t
    return batch, lengths
