"""Training batches read ahead by `torch.utils.data.DataLoader` workers while the model trains on the last one.

The sampler stays the one source of order and position: batches come in its order, and its state advances only as
the trainer takes them (so a checkpoint saved between two batches resumes after the last one trained, not after
the last one a worker read ahead).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from sslc.data.sampler import LengthBucketBatchSampler
from sslc.data.segments import SegmentDataset, collate

# Reader processes per training run when its crops must still be read from disk, and batches each reads ahead.
LOADER_WORKERS = 2
PREFETCH_BATCHES = 2


def loader_workers(dataset: SegmentDataset) -> int:
    """0 when every crop is already in memory (shipped with a trial: a worker would only copy them), else
    LOADER_WORKERS (at most the cores there are)."""
    return 0 if dataset.in_memory() else min(LOADER_WORKERS, os.cpu_count() or 1)


def prefetched_batches(
    dataset: SegmentDataset, sampler: LengthBucketBatchSampler, workers: int | None = None,
    prefetch: int = PREFETCH_BATCHES, pin_memory: bool = False, shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Endless (indices, waves [B, S], lengths [B]) in the sampler's order, epoch after epoch; `workers` None:
    `loader_workers(dataset)`. `shard` (rank, world): only the indices `rank::world` of each of the sampler's
    batches are read and handed out (a data-parallel worker's part of the global batch). Close it (or let it
    go) to stop the workers."""
    workers = loader_workers(dataset) if workers is None else workers
    while True:
        batches = sampler.epoch_batches(sampler.epoch)
        if sampler.batches_yielded >= len(batches):  # saved right after an epoch's last batch
            sampler.set_epoch(sampler.epoch + 1)
            continue
        rank, world = shard
        rest = [batch[rank::world] for batch in batches[sampler.batches_yielded :]]
        if workers == 0:
            loaded = (collate([dataset[i] for i in batch]) for batch in rest)
        else:
            loaded = DataLoader(dataset, batch_sampler=rest, collate_fn=collate, num_workers=workers,
                                prefetch_factor=prefetch, pin_memory=pin_memory)
        for indices, (waves, lengths) in zip(rest, loaded):
            sampler.batches_yielded += 1  # taken by the trainer: a state saved from now on resumes after it
            yield indices, waves, lengths
        sampler.set_epoch(sampler.epoch + 1)
