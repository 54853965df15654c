"""The one error type the CLI turns into a one-line message and a non-zero exit.

It is a ValueError (and ``PeftsTypeError`` also a TypeError), so a Python caller of
``pefts.certify`` catches a bad argument the usual way, ``except ValueError``.
"""


class PeftsError(ValueError):
    """A problem with the user's input or files, explained in one line."""

    exit_code = 1  # the command line's exit status


class PeftsTypeError(PeftsError, TypeError):
    """An argument of the wrong type (a text where a number belongs, 1000.5 samples)."""
