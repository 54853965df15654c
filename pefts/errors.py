"""The one error type the CLI turns into a one-line message and a non-zero exit."""


class PeftsError(Exception):
    """A problem with the user's input or files, explained in one line."""

    exit_code = 1  # the command line's exit status
