"""What a source of teacher targets hands the trainer for one batch, whether cached or computed live."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch


class TargetBatch(NamedTuple):
    """`hidden[j]`: [B, T, D] float32 teacher hidden states at the source's j-th layer, zero past each segment's
    end; `frame_mask`: [B, T] True on real frames."""

    hidden: list[torch.Tensor]
    frame_mask: torch.Tensor


class TargetSource(Protocol):
    """Teacher targets of one dataset at fixed teacher hidden indices (`layers`)."""

    layers: list[int]

    def get(
        self,
        indices: Sequence[int],
        waves: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> TargetBatch:
        """Targets of the dataset's segments `indices`; `waves`/`lengths` is their collated audio when the caller
        already has it (a live source then skips loading it again)."""
        ...
