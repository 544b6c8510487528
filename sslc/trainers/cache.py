"""The on-disk teacher-target cache: every trial of a search distils from the same teacher on the same data, so
the teacher's target layers are computed once, stored as memory-mapped arrays (fp16, or float32 for exact ones) and shared by all trials and
all processes (Ray workers) on the machine.

Layout, under `<cache_root>/<key>/` where key hashes the teacher, the segments and the crop:

    .lock              flock'ed while building, so concurrent processes build once and the others wait
    layer-05/          one directory per teacher hidden index, so trials needing other layers share the rest
        frames.npy     int64 [N]: frames of each segment (offsets are their cumulative sum)
        targets.npy    float16 (or float32) [total frames, D], segments concatenated
        complete       written last, inside a temp directory that is then renamed into place

A layer directory without `complete` (a crashed or foreign writer) is never read; it is rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sslc.data import SegmentDataset
from sslc.files import write_json_atomically
from sslc.trainers.target_batch import TargetBatch

MARKER = "complete"
_TMP_PREFIX = ".tmp-"
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
    ) -> TeacherTargetCache:
        """Open the cache in `directory` (whose name is the caller's key), computing whatever layers are missing.

        Complete layers are read without locking; building happens under an exclusive flock, re-checked after
        acquiring it, so of several processes arriving together one builds and the others then just read.
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
                    _build(directory, teacher, dataset, missing, batch_size, device, np.dtype(dtype))
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
    """Delete temp directories of builders that died (we hold the lock, so none is alive) and incomplete layer
    directories of the layers about to be built (nobody reads those)."""
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


def _build(
    directory: Path,
    teacher: nn.Module,
    dataset: SegmentDataset,
    layers: list[int],
    batch_size: int,
    device: torch.device | str | None,
    dtype: np.dtype = np.dtype(np.float16),
) -> None:
    if device is None:
        device = next(teacher.parameters()).device
    config = teacher.config
    frames = np.array([config.frames_for(n) for n in dataset.lengths], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(frames)]).astype(np.int64)
    tmp_dirs = {t: directory / f"{_TMP_PREFIX}{layer_dir_name(t)}-{uuid.uuid4().hex}" for t in layers}
    arrays = {}
    try:
        for layer, tmp in tmp_dirs.items():
            tmp.mkdir()
            np.save(tmp / "frames.npy", frames)
            arrays[layer] = np.lib.format.open_memmap(
                tmp / "targets.npy", mode="w+", dtype=dtype, shape=(int(offsets[-1]), config.embed_dim)
            )
        _fill(arrays, teacher, dataset, frames, offsets, batch_size, device)
    except BaseException:
        for tmp in tmp_dirs.values():  # no half-built temp directories left behind by a failed build
            shutil.rmtree(tmp, ignore_errors=True)
        raise

    for layer, tmp in tmp_dirs.items():
        arrays[layer].flush()
        del arrays[layer]
        # The marker goes in last and the rename is atomic: a reader sees a complete layer or none.
        (tmp / MARKER).write_text(
            json.dumps({"layer": layer, "segments": len(frames), "dim": config.embed_dim})
        )
        os.replace(tmp, directory / layer_dir_name(layer))


def _fill(arrays, teacher, dataset, frames, offsets, batch_size, device) -> None:
    """Run the teacher over every segment and write its hidden states into the open memmaps."""
    teacher.eval()
    with torch.inference_mode():
        for batch in equal_length_batches(dataset.lengths, batch_size):
            if frames[batch[0]] == 0:
                continue  # shorter than one frame: nothing to store
            waves = torch.from_numpy(np.stack([dataset[i] for i in batch])).to(device)
            hidden = teacher(waves).hidden_states  # no lengths: nothing in the batch is padded
            for layer, array in arrays.items():
                values = hidden[layer].float().cpu().numpy().astype(array.dtype)
                if not np.isfinite(values).all():
                    raise ValueError(
                        f"teacher hidden state {layer} is not finite in {array.dtype} (overflow or a broken teacher)"
                    )
                for row, i in enumerate(batch):
                    if values.shape[1] != frames[i]:
                        raise RuntimeError(f"teacher gave {values.shape[1]} frames, expected {frames[i]}")
                    array[offsets[i] : offsets[i + 1]] = values[row]
