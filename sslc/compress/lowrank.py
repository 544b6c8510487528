"""Low-rank factorisation: a linear W (out x in) becomes up(down(x)) from W's truncated SVD.

W ~= U_r S_r V_r^T is split symmetrically, down = S_r^1/2 V_r^T (rank x in) and up = U_r S_r^1/2 (out x rank),
so neither factor carries all the scale; the bias stays on `up`. By Eckart-Young this is the best rank-r
approximation in Frobenius norm, and at rank min(in, out) it reproduces W up to rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from sslc.models import LowRankLinear

from .slicing import State


def factorize(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(down [rank, in], up [out, rank]) with up @ down the best rank-`rank` approximation of `weight`."""
    if not 1 <= rank <= min(weight.shape):
        raise ValueError(
            f"rank must be 1..{min(weight.shape)} for a {tuple(weight.shape)} weight, got {rank}"
        )
    # float64: at full rank the product must reproduce the weight to float32 rounding.
    matrix = weight.detach().double()
    if matrix.shape[0] < matrix.shape[1]:
        # LAPACK's divide-and-conquer SVD is markedly slower on wide matrices (e.g. FFN fc2, 768 x 3072) than on
        # their tall transpose: factor W^T = V S U^T instead; the factors are the same up to signs.
        v, s, uh = torch.linalg.svd(matrix.T, full_matrices=False)
        u, vh = uh.T, v.T
    else:
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[:rank].sqrt()
    down = root[:, None] * vh[:rank]
    up = u[:, :rank] * root[None, :]
    return down.to(weight.dtype), up.to(weight.dtype)


def low_rank_linear(linear: nn.Linear, rank: int) -> LowRankLinear:
    """A `LowRankLinear` approximating `linear` at `rank`."""
    down, up = factorize(linear.weight, rank)
    out = LowRankLinear(linear.in_features, linear.out_features, rank, bias=linear.bias is not None)
    out.to(device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        out.down.weight.copy_(down)
        out.up.weight.copy_(up)
        if linear.bias is not None:
            out.up.bias.copy_(linear.bias)
    return out


def factorize_state(state: State, prefix: str, rank: int) -> None:
    """Replace `<prefix>weight`/`bias` with the `down`/`up` keys of a `LowRankLinear` of that rank."""
    weight = state.pop(f"{prefix}weight")
    state[f"{prefix}down.weight"], state[f"{prefix}up.weight"] = factorize(weight, rank)
    if f"{prefix}bias" in state:
        state[f"{prefix}up.bias"] = state.pop(f"{prefix}bias")
