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


def rung_schedule(rungs: list[int], warmup_fraction: float, decay: str = "cosine") -> Callable[[int], float]:
    """`warmup_decay` restarted at every rung of a multi-fidelity trial (`rungs`: the steps it is scored at, the
    last its longest training): each stretch between two rungs warms up and decays to zero over its own steps (a
    warm restart, as in SGDR). So every rung is scored at the end of a decay like a single-fidelity trial, and the
    first stretch is exactly the single-fidelity schedule of `rungs[0]` steps: a promoted trial's first rung is
    the same training as an unpromoted one's, and as a search with one fidelity's trial. One rung: `warmup_decay`."""
    starts = [0, *rungs[:-1]]
    stretches = [(start, warmup_decay(end - start, warmup_fraction, decay)) for start, end in zip(starts, rungs)]

    def factor(done: int) -> float:
        start, stretch = next(((a, f) for (a, f), end in zip(stretches, rungs) if done < end), stretches[-1])
        return stretch(done - start)

    return factor
