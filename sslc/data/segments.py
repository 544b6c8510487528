"""Crops of a corpus: a fixed one per file (held-out sets), or a seeded random sequence over the whole corpus
(training), read by seeking and cached in memory."""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sslc.data.audio import SAMPLE_RATE, read_crop
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


def random_crops(files: Sequence[AudioFile], count: int, max_seconds: float, seed: int) -> list[Segment]:
    """The first `count` crops of the seeded random sequence over the whole corpus: each picks a file with
    probability proportional to its length (every second of audio equally likely) and a start uniformly within it;
    files shorter than `max_seconds` are taken whole.

    One numpy Generator draws all of them in order, so the sequence of a longer `count` starts with this one
    (a run that trains longer reads the same crops first) and every trial of a study (same seed) reads the same.
    """
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    if not files or count < 1:
        raise ValueError(f"random_crops needs files and count >= 1, got {len(files)} files, count {count}")
    max_len = int(max_seconds * SAMPLE_RATE)
    # Sorted by corpus-relative path: the sequence does not depend on listing order or where the corpus lies.
    ordered = sorted(files, key=lambda f: (f.key, str(f.path)))
    lengths = np.array([f.num_samples for f in ordered], dtype=np.int64)
    ends = np.cumsum(lengths)
    draws = np.random.default_rng(seed).random((count, 2))
    picks = np.searchsorted(ends, draws[:, 0] * ends[-1], side="right").clip(max=len(ordered) - 1)
    crops = []
    for pick, position in zip(picks.tolist(), draws[:, 1].tolist()):
        f = ordered[pick]
        span = max(0, f.num_samples - max_len)
        crops.append(Segment(f.path, int(position * (span + 1)), min(max_len, f.num_samples)))
    return crops


def segments_fingerprint(segments: Sequence[Segment]) -> str:
    """sha256 over each segment's file (relative to the segments' common folder), crop and file size.

    It ignores where the corpus lies and file times (a moved or copied corpus keeps its key); size stands in for
    the content: re-reading a whole corpus to hash it would cost as much as computing the targets.
    """
    paths = [os.path.abspath(segment.path) for segment in segments]
    root = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""
    sizes: dict[str, int] = {}
    rows = []
    for segment, path in zip(segments, paths):
        if path not in sizes:
            try:
                sizes[path] = os.path.getsize(path)
            except OSError:
                sizes[path] = -1  # unreadable now: loading will fail anyway
        rows.append([os.path.relpath(path, root), segment.start, segment.num_samples, sizes[path]])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


class SegmentDataset:
    """Index -> float32 waveform of a segment, read by seeking (only the crop is decoded).

    Crops are cached (least recently used evicted beyond `cache_bytes`): a short trial reads the same few
    hundred crops in every one of its head-fit, training and scoring passes.
    """

    def __init__(self, segments: Sequence[Segment], cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.segments = list(segments)
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        # Decoded crops travel with a pickled copy (to Ray's workers) only when asked (`RunInputs.ship_audio`):
        # the driver decodes every crop to build the teacher targets, and a large corpus must not go along.
        self.pickle_decoded = False

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if not self.pickle_decoded:
            state["_cache"], state["_cached_bytes"] = OrderedDict(), 0
        return state

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
            wave = read_crop(seg.path, seg.start, seg.num_samples)
            self._remember(index, wave)
        # A copy: callers may modify what they get without corrupting the cache.
        return wave.copy()

    def in_memory(self) -> bool:
        """Every crop is decoded and cached (e.g. shipped with a trial's context): no file is read any more."""
        return len(self._cache) == len(self.segments)

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
