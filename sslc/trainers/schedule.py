"""Learning-rate schedule: linear warm-up, then cosine or linear decay to zero at the last step."""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_decay(total_steps: int, warmup_fraction: float, decay: str = "cosine") -> Callable[[int], float]:
    """Multiplier of the base LR for `LambdaLR`; its argument is the number of optimizer steps already taken."""
    if decay not in ("cosine", "linear"):
        raise ValueError(f"decay must be 'cosine' or 'linear', got {decay!r}")
    warmup = int(round(warmup_fraction * total_steps))

    def factor(done: int) -> float:
        if done < warmup:
            return (done + 1) / warmup  # the first step already moves: no wasted step at LR 0
        progress = min((done - warmup) / max(total_steps - warmup, 1), 1.0)
        if decay == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor
