"""On-disk cache of importance scores, keyed by (teacher fingerprint, data fingerprint, method).

Data-driven scores cost forward and backward passes of the teacher, and a search asks for them for every
candidate; they depend only on the teacher's weights, the scoring data and the method, so they are computed
once and stored as one file per key.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from sslc.files import write_atomically
from sslc.models.fingerprint import model_fingerprint, tensor_bytes

__all__ = ["ImportanceCache", "data_fingerprint", "model_fingerprint"]


def data_fingerprint(batches: list[tuple[torch.Tensor, torch.Tensor | None]]) -> str:
    """sha256 of the waveform bytes and lengths of every batch, in order."""
    digest = hashlib.sha256()
    for waveforms, lengths in batches:
        digest.update(f"{tuple(waveforms.shape)}:{waveforms.dtype}".encode())
        digest.update(tensor_bytes(waveforms))
        digest.update(b"none" if lengths is None else tensor_bytes(lengths.long()))
    return digest.hexdigest()


class ImportanceCache:
    """Scores (any nest of lists / dicts of tensors) stored as `<method>-<teacher>-<data>.pt` in `directory`.

    Files are written to a temporary name and renamed into place, so a concurrent reader (or a crash) never
    sees half a file; an unreadable file counts as a miss and is overwritten.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def path(self, model_key: str, data_key: str, method: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in method)
        return self.directory / f"{safe}-{model_key[:20]}-{data_key[:20]}.pt"

    def get(self, model_key: str, data_key: str, method: str):
        path = self.path(model_key, data_key, method)
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a truncated or foreign file: recompute rather than fail the search
            return None

    def put(self, model_key: str, data_key: str, method: str, scores) -> Path:
        return write_atomically(self.path(model_key, data_key, method), lambda tmp: torch.save(scores, tmp))
