"""A sslc file (student or anytime) as safetensors: the weights as tensors, everything else as one JSON string in
the header's metadata. No pickle: any safetensors reader (Python, Rust, JS) opens it, and nothing in it runs code.

`write_safetensors(path, payload)` takes the same payload dict `torch.save` would get (its `state_dict` the
tensors, the rest JSON-serialisable); `read_safetensors(path)` gives it back.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

METADATA_KEY = "sslc"  # the header metadata entry holding the JSON of everything but the weights


def write_safetensors(path: str | os.PathLike, payload: dict) -> None:
    from safetensors.torch import save_file

    rest = {k: v for k, v in payload.items() if k != "state_dict"}
    # clone: safetensors refuses tensors that share storage, which a state dict may hold (views of one weight).
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in payload["state_dict"].items()}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(rest)})


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether `path` starts like a safetensors file: a little-endian u64 header size, then a JSON object."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        return False
    size = struct.unpack("<Q", head[:8])[0]
    return head[8:9] == b"{" and 0 < size <= Path(path).stat().st_size - 8


def read_safetensors(path: str | os.PathLike, map_location="cpu") -> dict:
    """The payload `write_safetensors` wrote. ValueError when the file is not one (no sslc metadata)."""
    from safetensors import safe_open

    device = str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"
    with safe_open(str(path), framework="pt", device=device) as handle:
        metadata = handle.metadata() or {}
        if METADATA_KEY not in metadata:
            raise ValueError("a safetensors file without sslc's architecture metadata")
        payload = json.loads(metadata[METADATA_KEY])
        payload["state_dict"] = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    return payload
