"""Where a trial's teacher targets come from: the shared on-disk cache, or the teacher run at every step."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from sslc.data import SegmentDataset, collate
from sslc.models.fingerprint import model_fingerprint
from sslc.trainers.cache import TeacherTargetCache
from sslc.trainers.fingerprint import combine, segments_fingerprint
from sslc.trainers.target_batch import TargetBatch, TargetSource

# Bump when what is stored changes meaning (layout, dtype, how targets are computed): old caches then miss.
# 2: keyed on corpus-relative paths and sizes (not absolute paths and mtimes), built in resumable chunks.
CACHE_FORMAT = 2
# Training targets are stored in fp16 (half the disk and page cache, noise far below what a short trial learns);
# held-out targets, which every score is measured against, are stored exactly (float32): a student that
# reproduces the teacher then scores 0, not fp16's rounding error.
TRAIN_DTYPE, EXACT_DTYPE = "float16", "float32"
# Training targets computed on CUDA run under bf16 autocast (fp16 storage rounds them anyway); on the CPU, and for
# the exact held-out targets, in float32. tests/test_scale.py checks bf16 targets against float32 ones: relative
# error (Frobenius norm of the difference over that of the float32 targets) below BF16_TOLERANCE.
BF16_TOLERANCE = 0.03


def build_device() -> torch.device:
    """The fastest device this process has for the teacher: the first CUDA GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_autocast(device: torch.device, exact: bool) -> torch.dtype | None:
    """The autocast dtype targets are computed under on `device` (None: float32)."""
    return torch.bfloat16 if device.type == "cuda" and not exact else None


class LiveTeacherTargets:
    """Runs the frozen teacher on each batch: no disk, but a teacher forward pass per step."""

    def __init__(self, teacher: nn.Module, dataset: SegmentDataset, layers: Sequence[int], device=None):
        self.device = torch.device(device) if device is not None else next(teacher.parameters()).device
        self.teacher = teacher.to(self.device)
        self.dataset = dataset
        self.layers = [int(t) for t in layers]

    def get(self, indices, waves=None, lengths=None) -> TargetBatch:
        if waves is None:
            waves, lengths = collate([self.dataset[i] for i in indices])
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        # no_grad rather than inference_mode: the targets enter the loss, whose backward may save them.
        with torch.no_grad(), autocast:
            out = self.teacher(waves.to(self.device), None if lengths is None else lengths.to(self.device))
        hidden = [out.hidden_states[t].float() for t in self.layers]
        mask = out.frame_mask()
        if mask is None:
            mask = torch.ones(hidden[0].shape[:2], dtype=torch.bool, device=hidden[0].device)
        return TargetBatch(hidden, mask)


class TeacherTargets:
    """A frozen teacher and where its targets are kept; `source(dataset, layers)` gives a trial its targets.

    With `cache_root` the targets are computed once per (teacher, segments, crop) and shared, through the
    filesystem, with every other trial and process on the machine; with None they are computed live. With
    `live_training` only the exact (held-out) targets are cached and training targets are computed live on
    `device` (a cache too large for the disk). The search's driver builds the cache before any trial starts
    (`build`); a trial then only opens it (and builds it only where it cannot see it: another node).
    Sources are also remembered in this object, so later trials in the same process skip even the lookup.
    """

    def __init__(
        self,
        teacher: nn.Module,
        cache_root: str | os.PathLike | None = None,
        crop_seconds: float | None = None,
        batch_size: int = 8,
        fingerprint: str | None = None,
        live_training: bool = False,
        device: torch.device | str | None = None,
    ):
        self.teacher = teacher.eval().requires_grad_(False)
        self.live_training = live_training
        self.device = device
        self.cache_root = Path(cache_root) if cache_root is not None else None
        self.crop_seconds = crop_seconds
        self.batch_size = batch_size
        self._fingerprint = fingerprint
        self._sources: dict[tuple[str, tuple[int, ...]], TargetSource] = {}

    @property
    def depth(self) -> int:
        return self.teacher.config.num_layers

    @property
    def dim(self) -> int:
        return self.teacher.config.embed_dim

    @property
    def fingerprint(self) -> str:
        """Hash of the teacher's architecture and weights (computed once; pass it in to skip that)."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.teacher)
        return self._fingerprint

    def cache_key(self, dataset: SegmentDataset, dtype: str = TRAIN_DTYPE) -> str:
        """Directory name of `dataset`'s targets under the cache root (layers are subdirectories of it)."""
        parts = [CACHE_FORMAT, self.fingerprint, segments_fingerprint(dataset.segments), self.crop_seconds]
        if dtype != TRAIN_DTYPE:  # fp16 keys are unchanged, so existing caches stay valid
            parts.append(dtype)
        return combine(*parts)[:32]

    def source(self, dataset: SegmentDataset, layers: Sequence[int], exact: bool = False) -> TargetSource:
        """Targets of `dataset` at teacher hidden indices `layers`; `exact` stores them in float32 (held-out
        sets), else fp16 (training sets). Live targets are always exact."""
        layers = tuple(sorted({int(t) for t in layers}))
        bad = [t for t in layers if not 0 <= t <= self.depth]
        if bad:
            raise ValueError(f"teacher hidden indices {bad} out of range 0..{self.depth}")
        if self.cache_root is None or (self.live_training and not exact):
            return LiveTeacherTargets(self.teacher, dataset, layers, self.device)
        dtype = EXACT_DTYPE if exact else TRAIN_DTYPE
        key = self.cache_key(dataset, dtype)
        found = self._sources.get((key, layers))
        if found is None:
            found = self._open_or_build(dataset, layers, dtype, key)
            self._sources[(key, layers)] = found
        return found

    def build(self, dataset: SegmentDataset, layers: Sequence[int], exact: bool = False,
              device: torch.device | None = None, progress: bool = False) -> None:
        """Compute the cached targets of `dataset` now (nothing when complete), on `device` (default: the
        fastest here) with this process's threads, the teacher brought back to where it was afterwards."""
        if self.cache_root is None or (self.live_training and not exact):
            return
        layers = tuple(sorted({int(t) for t in layers}))
        device = device or build_device()
        home = next(self.teacher.parameters()).device
        dtype = EXACT_DTYPE if exact else TRAIN_DTYPE
        batch_size = self.batch_size * (4 if device.type == "cuda" else 1)
        try:
            self._open_or_build(dataset, layers, dtype, self.cache_key(dataset, dtype), device,
                                build_autocast(device, exact), progress, batch_size)
        finally:
            self.teacher.to(home)

    def _open_or_build(self, dataset, layers, dtype: str, key: str, device=None, autocast=None, progress=False,
                       batch_size: int | None = None) -> TeacherTargetCache:
        description = {
            "format": CACHE_FORMAT,
            "teacher": self.fingerprint,
            "teacher_family": self.teacher.config.family,
            "segments": len(dataset),
            "crop_seconds": self.crop_seconds,
            "dtype": dtype,
        }
        if device is not None:
            self.teacher.to(device)
        return TeacherTargetCache.open_or_build(
            self.cache_root / key, self.teacher, dataset, layers, batch_size or self.batch_size, device=device,
            description=description, dtype=dtype, autocast=autocast, progress=progress,
        )
