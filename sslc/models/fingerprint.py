"""Content hash of a model: what decides whether something cached from it (teacher targets, importance scores)
may be reused. Weights, not checkpoint names: two models that compute the same thing share caches, and a model
whose weights changed never reuses stale ones."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A tensor's bytes (any dtype, bfloat16 included, without numpy's dtype limits)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the architecture (config JSON when it has one) and every parameter and buffer: name, dtype,
    shape and bytes."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    digest.update((config.to_json(sort_keys=True) if hasattr(config, "to_json") else type(model).__name__).encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()
