"""What every sslc command shares: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

from sslc.errors import UserError


def cli_entry(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a command's main: UserError -> 'error: ...' and exit 2 (SearchFailed: 1); Ctrl-C -> exit 130 (work
    already saved). Keyword arguments (seams for tests) pass through."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None, **seams) -> int:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
        try:
            code = main(argv, **seams)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            code = error.exit_code  # 2: bad input; 1: a search that stopped on a fault
        except KeyboardInterrupt:
            print("interrupted: finished work is saved; rerun the same command to resume", file=sys.stderr)
            code = 130
        return code or 0  # console scripts pass this to sys.exit

    return wrapper


class ArgumentParser:
    """argparse, but a usage mistake is a one-line error with exit code 2 like every other bad input."""

    def __new__(cls, *args, **kwargs):
        import argparse

        class _Parser(argparse.ArgumentParser):
            def error(self, message):  # argparse prints the whole usage; one line is enough
                raise UserError(f"{self.prog}: {message}")

        return _Parser(*args, **kwargs)
