"""int8 dynamic quantization of a student's linears, for CPU inference.

Weights are stored as int8 and activations quantized on the fly per batch. `LowRankLinear` is built from two
`nn.Linear`s, so its factors are quantized too. The quantized module is not rebuilt from the student's
`EncoderConfig` (which describes the float model): rebuild the float model, then re-apply this from the
`CompressionConfig`'s `quantize` field.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .sparsity import without_masks


def quantize_int8(model: nn.Module) -> nn.Module:
    """A dynamically int8-quantized copy of `model` (moved to CPU, the only device these kernels run on); a
    sparse student's masks are folded into its weights first (a masked linear is not an `nn.Linear` to swap)."""
    model = without_masks(model.to("cpu")).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
