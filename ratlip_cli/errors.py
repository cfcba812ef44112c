"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class RatlipError(Exception):
    """A user-facing error: the message says what was wrong and how to fix it."""
