"""Batches of similar-length segments, deterministic per (seed, epoch) and resumable mid-epoch.

How a trainer uses it (one pass = the rest of the current epoch; the epoch then advances by itself):

    sampler = LengthBucketBatchSampler(dataset.lengths, batch_size=8, seed=0)
    while training:
        for indices in sampler:
            waves, lengths = collate([dataset[i] for i in indices])
            ...
        checkpoint["sampler"] = sampler.state_dict()  # may also be saved between any two batches

`iter_batches(dataset, sampler)` is that inner loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from sslc.data.segments import collate

# Sorting happens within windows of this many batches: enough for tight length groups, while batch
# composition still varies between epochs.
WINDOW_BATCHES = 50


class LengthBucketBatchSampler:
    """Yields lists of dataset indices; every index exactly once per epoch (the last batch may be smaller).

    With shuffle, indices are shuffled, sorted by length within windows, cut into batches, and the batch
    order is shuffled again. Without shuffle, batches follow the global length order (for evaluation).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.batches_yielded = 0
        # An epoch without batches would make `while training: for ... in sampler` spin forever.
        if len(self) == 0:
            raise ValueError(
                f"no batches: {len(self.lengths)} segments, batch_size {batch_size}, drop_last {drop_last}"
            )

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch."""
        self.epoch = epoch
        self.batches_yielded = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_yielded": self.batches_yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration continue with the batch after the last one yielded before saving."""
        self.epoch = int(state["epoch"])
        self.batches_yielded = int(state["batches_yielded"])

    def __len__(self) -> int:
        """Batches in a full epoch."""
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of `epoch`, in order; a pure function of (lengths, seed, epoch, settings)."""
        n = len(self.lengths)
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            batches = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        else:
            rng = np.random.default_rng([self.seed, epoch])
            perm = rng.permutation(n)
            window = self.batch_size * WINDOW_BATCHES
            batches = []
            for w in range(0, n, window):
                chunk = perm[w : w + window]
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
                batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return [b.tolist() for b in batches]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches(self.epoch)
        # A state saved right after an epoch's last batch resumes at the next epoch, not with an empty pass.
        if self.batches_yielded >= len(batches):
            self.set_epoch(self.epoch + 1)
            batches = self.epoch_batches(self.epoch)
        for batch in batches[self.batches_yielded :]:
            # Counted before handing it out: a state saved while processing this batch resumes after it.
            self.batches_yielded += 1
            yield batch
        self.set_epoch(self.epoch + 1)


def iter_batches(dataset, sampler: LengthBucketBatchSampler) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Collated (waves [B, S], lengths [B]) for the rest of the sampler's current epoch."""
    for indices in sampler:
        yield collate([dataset[i] for i in indices])
