"""Content hashes that decide whether cached teacher targets still match the training data (the teacher's own is
`sslc.models.fingerprint.model_fingerprint`)."""

from __future__ import annotations

import hashlib
import json

from sslc.data.segments import segments_fingerprint

__all__ = ["combine", "segments_fingerprint"]


def combine(*parts: object) -> str:
    """One sha256 over several already-computed parts (their JSON)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
