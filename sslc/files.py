"""Write-then-rename: a reader (another trial, the dashboard, a resumed run) never sees a half-written file."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None], durable: bool = False) -> Path:
    """Call `write(tmp)` on a unique temporary file beside `path`, then rename it over `path`.

    durable: fsync the file before the rename, so it survives a power cut (checkpoints).
    The temporary file is removed when `write` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomically(path: str | os.PathLike, data, **dumps_options) -> Path:
    return write_text_atomically(path, json.dumps(data, **dumps_options))
