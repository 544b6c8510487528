"""Content hashes that decide whether cached teacher targets still match the training data (the teacher's own is
`sslc.models.fingerprint.model_fingerprint`)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

from sslc.data import Segment


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
