"""The rich Console every command prints through: a terminal's own width, and full width for a file or a pipe.

Written to a batch job's log, rich would otherwise wrap lines and cut tables at 80 columns (`short-tr…`).
"""

from __future__ import annotations

from rich.console import Console

# Width of output that is not a terminal: wide enough that no table or line of ours is cut.
LOG_WIDTH = 240


def make_console(stderr: bool = False, quiet: bool = False, file=None, **options) -> Console:
    console = Console(stderr=stderr, quiet=quiet, file=file, **options)
    if not console.is_terminal:
        console = Console(stderr=stderr, quiet=quiet, file=file, width=LOG_WIDTH, **options)
    return console
