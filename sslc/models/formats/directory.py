"""Formats that write a directory (transformers, s3prl, a split ONNX pair) replace only what sslc wrote."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from sslc.errors import UserError

MARKER = "sslc.json"  # every directory format writes the student's metadata here


def check_output_directory(directory: Path) -> None:
    """UserError unless `directory` is absent, empty, or an earlier export (it holds `MARKER`)."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise UserError(f"{directory} exists and is not a directory: this format writes a directory")
    if any(directory.iterdir()) and not (directory / MARKER).is_file():
        raise UserError(f"{directory} is a directory with other files in it: give a new or empty directory")


def write_directory(directory: str | os.PathLike, write: Callable[[Path], None], metadata: dict | None) -> Path:
    """Call `write(tmp)` on a fresh directory beside `directory`, add `MARKER` with `metadata`, then put it in
    place of `directory`: a failed export leaves no half-written directory behind."""
    directory = Path(directory)
    check_output_directory(directory)
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        (tmp / MARKER).write_text(json.dumps(metadata or {}, indent=2), encoding="utf-8")
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory
