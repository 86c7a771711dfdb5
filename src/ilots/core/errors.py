"""The one exception type a user can cause: its message is printed as is, without a traceback."""

from __future__ import annotations


class IlotsError(Exception):
    """A problem with the user's input or settings.

    The message is one sentence that names the file or setting at fault and says what to do.
    The command-line entry point prints it and exits with status 2.
    """
