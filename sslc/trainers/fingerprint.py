"""Content hashes that decide whether cached teacher targets still match: teacher weights and training data."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import torch
from torch import nn

from sslc.data import Segment


def teacher_fingerprint(teacher: nn.Module) -> str:
    """sha256 over the architecture (config JSON when it has one) and every parameter and buffer's bytes.

    Weights, not names of checkpoints: two teachers that compute the same thing share targets, and a teacher
    whose weights changed never reuses stale ones.
    """
    digest = hashlib.sha256()
    config = getattr(teacher, "config", None)
    digest.update(
        (config.to_json(sort_keys=True) if hasattr(config, "to_json") else type(teacher).__name__).encode()
    )
    for name, tensor in teacher.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def segments_fingerprint(segments: Sequence[Segment]) -> str:
    """sha256 over each segment's file, crop and the file's size and modification time.

    Size and mtime stand in for the audio content: re-reading a whole corpus to hash it would cost as much as
    computing the targets.
    """
    rows = []
    for seg in segments:
        try:
            stat = os.stat(seg.path)
            stamp = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            stamp = (-1, -1)  # unreadable now: loading will fail anyway, so no reuse question arises
        rows.append([os.path.abspath(seg.path), seg.start, seg.num_samples, *stamp])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def combine(*parts: object) -> str:
    """One sha256 over several already-computed parts (their JSON)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
