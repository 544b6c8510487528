"""Errors a user can fix. The CLIs print them as one line and exit with code 2 (never a traceback)."""


class UserError(Exception):
    """Bad input: an unknown teacher, a malformed budget, unusable audio, an invalid config.

    The message is one line that says what was expected, so it can be shown as is.
    """

    exit_code = 2
