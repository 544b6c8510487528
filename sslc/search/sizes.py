"""Sizes in bytes, as people write them (`--cache-limit 20GB`) and read them; light, for the CLI's early checks."""

from __future__ import annotations

import re

from sslc.errors import UserError

_PREFIXES = "kmgt"


def parse_size(text: str, option: str = "--cache-limit") -> int:
    """'20GB', '500M', '1.5TiB', '2e9' -> bytes (k/M/G/T: powers of 1000; KiB/MiB/GiB/TiB: of 1024)."""
    match = re.match(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)(i?)b?\s*$", str(text), re.IGNORECASE)
    if not match or (match.group(3) and not match.group(2)):
        raise UserError(f"{option} {text!r} is not understood: use e.g. 20GB, 500MB or 1.5TiB")
    number, prefix, binary = match.groups()
    power = _PREFIXES.index(prefix.lower()) + 1 if prefix else 0
    value = float(number) * (1024 if binary else 1000) ** power
    if value <= 0:
        raise UserError(f"{option} {text!r} must be positive")
    return int(value)


def format_size(n: float) -> str:
    """Bytes for people: 1.4e10 -> '14 GB'."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"
