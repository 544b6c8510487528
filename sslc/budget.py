"""Compute budgets: parse what a user types (`30GMACs`, `500MMACs`, `3e10`, `40%`) into a MAC limit."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from sslc.errors import UserError

_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_MACS = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)\s*(macs?)?\s*$", re.IGNORECASE)
_SHARE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*%\s*$")
# A bare number (no unit) below this is surely not meant as MACs: even the tiny test teacher needs millions.
MIN_BARE_MACS = 1e6


class BudgetError(UserError):
    pass


@dataclass(frozen=True)
class BudgetSpec:
    """What the user asked for: an absolute MAC count or a share of the teacher's MACs."""

    macs: float | None = None
    share: float | None = None  # of the teacher's MACs, 0 < share <= 1

    def resolve(self, teacher_macs: int) -> int:
        return int(self.macs) if self.macs is not None else int(math.floor(self.share * teacher_macs))


def parse_budget(text: str) -> BudgetSpec:
    """'30GMACs', '30G', '500MMACs', '3e10', '40%' (case-insensitive) -> BudgetSpec; bad input -> BudgetError."""
    if not isinstance(text, str) or not text.strip():
        raise BudgetError("budget is empty: give MACs such as 30GMACs, 500MMACs, 3e10, or a share such as 40%")
    share = _SHARE.match(text)
    if share:
        value = float(share.group(1))
        if not 0 < value <= 100:
            raise BudgetError(f"budget {text!r}: a share of the teacher's MACs must be in (0, 100]%")
        return BudgetSpec(share=value / 100)
    match = _MACS.match(text)
    if not match:
        raise BudgetError(f"budget {text!r} is not understood: use MACs such as 30GMACs, 500MMACs, 3e10, or 40%")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(value) or value <= 0:
        raise BudgetError(f"budget {text!r} must be a positive number of MACs")
    if not match.group(2) and not match.group(3) and value < MIN_BARE_MACS:
        hints = [f"{value * 100:g}%" if value <= 1 else f"{value:g}%"] if value <= 100 else []
        hints.append(f"{value:g}GMACs")
        raise BudgetError(
            f"budget {text!r} would be {value:g} MACs, surely too few: did you mean {' or '.join(hints)}? "
            "(a bare number is MACs; a share of the teacher needs %)"
        )
    return BudgetSpec(macs=value)


@dataclass(frozen=True)
class Budget:
    """The limits one search enforces. MACs in `convention`: "seconds" (one waveform of `seconds` of 16 kHz audio,
    sslc's default) or "superb" (summed over the SUPERB profiler's 32 utterances, as the published tables quote
    them; `sslc.metrics.macs_in_convention` counts either)."""

    max_macs: int
    seconds: float = 10.0
    max_params: int | None = None
    max_latency_ms: float | None = None
    convention: str = "seconds"

    def violations(
        self, macs: int | None, params: int | None = None, latency_ms: float | None = None
    ) -> list[str]:
        """Human-readable reasons a candidate is over budget (empty when it fits); `macs` in the budget's
        convention (None: not checked)."""
        out = []
        if macs is not None and macs > self.max_macs:
            unit = "GMACs (SUPERB convention)" if self.convention == "superb" else "GMACs"
            out.append(f"{macs / 1e9:.2f} {unit} > budget {self.max_macs / 1e9:.2f} {unit}")
        if self.max_params is not None and params is not None and params > self.max_params:
            out.append(f"{params / 1e6:.2f} M params > limit {self.max_params / 1e6:.2f} M")
        if self.max_latency_ms is not None and latency_ms is not None and latency_ms > self.max_latency_ms:
            out.append(f"latency {latency_ms:.1f} ms > limit {self.max_latency_ms:.1f} ms")
        return out

    def constraints(self, macs: int, params: int) -> dict[str, float]:
        """The constraint values Optuna's samplers are given for a config (`Trial.set_constraint`: feasible when
        every value is <= 0): by how much it is over each limit known before training, as a share of that limit.
        "macs" always (`macs` in the budget's convention), "params" when there is a --max-params limit; positive
        exactly when `violations` names that limit. Latency is measured only by training, so it is not one."""
        out = {"macs": (macs - self.max_macs) / self.max_macs}
        if self.max_params is not None:
            out["params"] = (params - self.max_params) / self.max_params
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def parse_count(text: str, what: str = "params") -> int:
    """'25M', '2.5e7', '25000000' -> int (for --max-params)."""
    match = re.match(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)\s*$", str(text), re.IGNORECASE)
    if not match:
        raise BudgetError(f"{what} limit {text!r} is not understood: use e.g. 25M or 2.5e7")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if value <= 0:
        raise BudgetError(f"{what} limit {text!r} must be positive")
    return int(value)
