"""A student as a TorchScript module (`torch.jit.load` runs it with torch alone, in Python or C++ / libtorch).

Traced from `graphs.StudentGraph`: `module(waveforms [B, S] float32, lengths [B] int64)` -> (hidden_state_0 ..
hidden_state_L, last_hidden_state, frame_lengths); batch and time stay dynamic (tracing records the shape
arithmetic, checked on another batch and length in the tests). The architecture, compression and provenance are
the extra file `sslc.json`.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from sslc.files import write_atomically

from ..encoder import SpeechEncoder
from .graphs import StudentGraph, example_batch

METADATA_FILE = "sslc.json"


def write_torchscript(encoder: SpeechEncoder, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings for shape arithmetic, which tracing records as ops
        with torch.no_grad():
            traced = torch.jit.trace(StudentGraph(encoder), example_batch(), check_trace=False)
    extra = {METADATA_FILE: json.dumps(metadata or {})}
    return write_atomically(Path(path), lambda tmp: torch.jit.save(traced, str(tmp), _extra_files=extra))
