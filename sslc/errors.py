"""Errors a user can fix. The CLIs print them as one line and exit with code 2 (never a traceback)."""


class UserError(Exception):
    """Bad input: an unknown teacher, a malformed budget, unusable audio, an invalid config.

    The message is one line that says what was expected, so it can be shown as is.
    """

    exit_code = 2


class SearchFailed(UserError):
    """The search stopped on a fault that is not bad input (the sampler, the study storage, the driver).

    Still one line and no traceback (the run directory keeps it): what completed is saved, and rerunning resumes.
    """

    exit_code = 1


def first_line(error: BaseException) -> str:
    """The first line of an error's message (messages of libraries can run for pages), or its type's name."""
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__


def one_line(error: BaseException) -> str:
    """`Type: first line of the message`, for faults whose type says something (a user error's message is enough)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0].strip()}" if lines else type(error).__name__
