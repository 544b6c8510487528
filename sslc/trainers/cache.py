"""The on-disk teacher-target cache: every trial of a search distils from the same teacher on the same data, so
the teacher's target layers are computed once, stored as memory-mapped arrays (fp16, or float32 for exact ones) and shared by all trials and
all processes (Ray workers) on the machine.

Layout, under `<cache_root>/<key>/` where key hashes the teacher, the segments and the crop:

    .lock              flock'ed while building, so concurrent processes build once and the others wait
    layer-05/          one directory per teacher hidden index, so trials needing other layers share the rest
        frames.npy     int64 [N]: frames of each segment (offsets are their cumulative sum)
        targets.npy    float16 (or float32) [total frames, D], segments concatenated
        complete       written last (with who built it, on which device, how long it took), inside the build
                       directory `.build-layer-05/` that is then renamed into place
    .build-layer-05/   a build in progress or killed: chunks of segments with a done-marker each (see `_Build`)

A layer directory without `complete` (a crashed or foreign writer) is never read; it is rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from sslc.console import make_console
from sslc.data import SAMPLE_RATE, SegmentDataset
from sslc.files import write_json_atomically
from sslc.trainers.target_batch import TargetBatch

MARKER = "complete"
_TMP_PREFIX = ".tmp-"  # builds of an older sslc, never resumed
_BUILD_PREFIX = ".build-"
# Segments per resumable unit of a build: a killed build loses at most this many segments' teacher passes.
CHUNK_SEGMENTS = 2048


def layer_dir_name(layer: int) -> str:
    return f"layer-{layer:02d}"


def is_complete(layer_dir: Path) -> bool:
    return (layer_dir / MARKER).is_file()


class TeacherTargetCache:
    """Read access to the cached targets of one dataset at teacher hidden indices `layers` (all complete)."""

    def __init__(self, directory: str | os.PathLike, layers: Sequence[int]):
        self.directory = Path(directory)
        self.layers = [int(t) for t in layers]
        self._arrays = []
        frames = None
        for layer in self.layers:
            layer_dir = self.directory / layer_dir_name(layer)
            if not is_complete(layer_dir):
                raise FileNotFoundError(
                    f"no complete teacher targets for layer {layer} under {self.directory}"
                )
            layer_frames = np.load(layer_dir / "frames.npy")
            if frames is not None and not np.array_equal(frames, layer_frames):
                raise ValueError(f"teacher target layers under {self.directory} disagree on segment frames")
            frames = layer_frames
            self._arrays.append(np.load(layer_dir / "targets.npy", mmap_mode="r"))
        if frames is None:
            raise ValueError("a teacher target cache needs at least one layer")
        self.frames = frames
        self.offsets = np.concatenate([[0], np.cumsum(frames)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.frames)

    def get(self, indices, waves=None, lengths=None) -> TargetBatch:
        indices = [int(i) for i in indices]
        counts = self.frames[indices]
        longest = int(counts.max())
        mask = torch.arange(longest)[None, :] < torch.from_numpy(counts)[:, None]
        hidden = []
        for array in self._arrays:
            out = np.zeros((len(indices), longest, array.shape[1]), dtype=np.float32)
            for row, (i, n) in enumerate(zip(indices, counts)):
                out[row, :n] = array[self.offsets[i] : self.offsets[i] + n]  # (fp16 ->) fp32 on copy
            hidden.append(torch.from_numpy(out))
        return TargetBatch(hidden, mask)

    # ---- building ------------------------------------------------------------------------------------------
    @classmethod
    def open_or_build(
        cls,
        directory: str | os.PathLike,
        teacher: nn.Module,
        dataset: SegmentDataset,
        layers: Sequence[int],
        batch_size: int = 8,
        device: torch.device | str | None = None,
        description: dict | None = None,
        dtype: str = "float16",
        autocast: torch.dtype | None = None,
        progress: bool = False,
        chunk_segments: int = CHUNK_SEGMENTS,
    ) -> TeacherTargetCache:
        """Open the cache in `directory` (whose name is the caller's key), computing whatever layers are missing
        on `device` (default: the teacher's), under `autocast` (a low-precision dtype, or None for float32).

        Complete layers are read without locking; building happens under an exclusive flock, re-checked after
        acquiring it, so of several processes arriving together one builds and the others then just read. A
        build killed half-way resumes at its first chunk without a done-marker.
        """
        directory = Path(directory)
        layers = sorted({int(t) for t in layers})
        if any(not is_complete(directory / layer_dir_name(t)) for t in layers):
            directory.mkdir(parents=True, exist_ok=True)
            with _exclusive_lock(directory / ".lock"):
                missing = [t for t in layers if not is_complete(directory / layer_dir_name(t))]
                if missing:
                    _remove_leftovers(directory, missing)
                    if description is not None:
                        write_json_atomically(directory / "key.json", description, indent=1, sort_keys=True)
                    _build(directory, teacher, dataset, missing, np.dtype(dtype), chunk_segments,
                           batch_size, device, autocast, progress)
        return cls(directory, layers)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_leftovers(directory: Path, missing: Sequence[int]) -> None:
    """Delete temp directories of builders of older formats (we hold the lock, so none is alive) and incomplete
    layer directories of the layers about to be built (nobody reads those). Partial builds (`.build-*`) stay:
    the new build resumes them."""
    for entry in directory.iterdir():
        if entry.name.startswith(_TMP_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
    for layer in missing:
        stale = directory / layer_dir_name(layer)
        if stale.exists():
            shutil.rmtree(stale)


def equal_length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches of segments of identical length: the teacher then sees no padding, so a segment's targets do not
    depend on its batch-mates (GroupNorm in the conv front end would otherwise mix in the padding)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and lengths[batches[-1][0]] == lengths[i]:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _build(directory: Path, teacher, dataset, layers, dtype: np.dtype, chunk_segments: int, batch_size: int,
           device, autocast, progress: bool) -> None:
    """Compute `layers` of the cache in `directory` (resuming a killed build), under the lock."""
    _Build(directory, teacher, dataset, layers, dtype, chunk_segments).run(batch_size, device, autocast, progress)


def _chunks(batches: list[list[int]], chunk_segments: int) -> list[list[list[int]]]:
    """Consecutive batches grouped into chunks of about `chunk_segments` segments (the build's resumable units)."""
    chunks: list[list[list[int]]] = [[]]
    for batch in batches:
        if chunks[-1] and sum(len(b) for b in chunks[-1]) + len(batch) > chunk_segments:
            chunks.append([])
        chunks[-1].append(batch)
    return [c for c in chunks if c]


class _Build:
    """Computing some layers of one cache directory, in `.build-layer-XX/` directories that survive a kill:

        .build-layer-04/frames.npy, targets.npy (written in place), chunk-00012 (done-marker, after a flush)

    A chunk is done when every layer being built has its marker; a resumed build skips those. When all are done,
    each layer gets its `complete` marker and is renamed into place (atomic: readers see a whole layer or none).
    """

    def __init__(self, directory: Path, teacher, dataset: SegmentDataset, layers, dtype: np.dtype, chunk_segments):
        self.directory, self.teacher, self.dataset, self.layers = directory, teacher, dataset, list(layers)
        self.dtype = dtype
        config = teacher.config
        self.frames = np.array([config.frames_for(n) for n in dataset.lengths], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.frames)]).astype(np.int64)
        self.dim = config.embed_dim
        self.chunks = _chunks(equal_length_batches(dataset.lengths, chunk_segments), chunk_segments)
        self.dirs = {t: directory / f"{_BUILD_PREFIX}{layer_dir_name(t)}" for t in self.layers}

    def _open(self, layer: int) -> np.memmap:
        """The layer's array, resumed when its build directory matches this build, else started afresh."""
        where = self.dirs[layer]
        shape = (int(self.offsets[-1]), self.dim)
        header = {"segments": len(self.frames), "dim": self.dim, "dtype": self.dtype.str, "chunks": len(self.chunks)}
        try:
            same = (json.loads((where / "build.json").read_text()) == header
                    and np.array_equal(np.load(where / "frames.npy"), self.frames))
        except (OSError, ValueError):
            same = False
        if same:
            return np.lib.format.open_memmap(where / "targets.npy", mode="r+")
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir()
        np.save(where / "frames.npy", self.frames)
        array = np.lib.format.open_memmap(where / "targets.npy", mode="w+", dtype=self.dtype, shape=shape)
        (where / "build.json").write_text(json.dumps(header))
        return array

    def run(self, batch_size: int, device, autocast, progress: bool) -> None:
        device = torch.device(device) if device is not None else next(self.teacher.parameters()).device
        arrays = {t: self._open(t) for t in self.layers}
        todo = [k for k in range(len(self.chunks))
                if not all((self.dirs[t] / f"chunk-{k:05d}").exists() for t in self.layers)]
        started = time.perf_counter()
        total = int(sum(self.dataset.lengths)) / SAMPLE_RATE
        done = total - sum(self.dataset.lengths[i] for k in todo for b in self.chunks[k] for i in b) / SAMPLE_RATE
        bar = _BuildProgress(total, done, progress, f"teacher targets, layers {self.layers} ({device.type})")
        with bar:
            for k in todo:
                for batch in self.chunks[k]:
                    for sub in (batch[i : i + batch_size] for i in range(0, len(batch), batch_size)):
                        self._fill(arrays, sub, device, autocast)
                        bar.advance(sum(self.dataset.lengths[i] for i in sub) / SAMPLE_RATE)
                for layer, array in arrays.items():
                    array.flush()  # the marker promises the chunk is on disk
                    (self.dirs[layer] / f"chunk-{k:05d}").touch()
        built_by = {"pid": os.getpid(), "host": socket.gethostname(), "device": str(device),
                    "autocast": str(autocast).removeprefix("torch.") if autocast else "float32",
                    "seconds": round(time.perf_counter() - started, 3)}
        for layer in self.layers:
            del arrays[layer]
            where = self.dirs[layer]
            for marker in where.glob("chunk-*"):
                marker.unlink()
            (where / MARKER).write_text(
                json.dumps({"layer": layer, "segments": len(self.frames), "dim": self.dim, "built_by": built_by})
            )
            os.replace(where, self.directory / layer_dir_name(layer))

    def _fill(self, arrays, batch: list[int], device: torch.device, autocast) -> None:
        """Run the teacher over the equal-length segments `batch` and write its hidden states into the arrays."""
        if self.frames[batch[0]] == 0:
            return  # shorter than one frame: nothing to store
        waves = torch.from_numpy(np.stack([self.dataset[i] for i in batch])).to(device)
        cast = torch.autocast(device.type, dtype=autocast, enabled=autocast is not None)
        with torch.inference_mode(), cast:
            hidden = self.teacher.eval()(waves).hidden_states  # no lengths: nothing in the batch is padded
        for layer, array in arrays.items():
            values = hidden[layer].float().cpu().numpy().astype(array.dtype)
            if not np.isfinite(values).all():
                raise ValueError(
                    f"teacher hidden state {layer} is not finite in {array.dtype} (overflow or a broken teacher)"
                )
            if values.shape[1] != self.frames[batch[0]]:
                raise RuntimeError(f"teacher gave {values.shape[1]} frames, expected {self.frames[batch[0]]}")
            for row, i in enumerate(batch):
                array[self.offsets[i] : self.offsets[i + 1]] = values[row]


class _BuildProgress:
    """The build's progress bar (rich, on stderr): seconds of audio done, and the teacher's speed in audio s/s."""

    def __init__(self, total: float, done: float, enabled: bool, description: str):
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} audio s"),
            TextColumn("{task.fields[speed]} audio s/s"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=make_console(stderr=True), disable=not enabled,
        )
        self._task = self._progress.add_task(description, total=total, completed=done, speed="-")
        self._started, self._seconds = time.perf_counter(), 0.0

    def __enter__(self):
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def advance(self, seconds: float) -> None:
        self._seconds += seconds
        speed = self._seconds / max(time.perf_counter() - self._started, 1e-9)
        self._progress.update(self._task, advance=seconds, speed=f"{speed:.0f}")
