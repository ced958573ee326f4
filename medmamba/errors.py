"""Errors that the CLI turns into one clear line and a non-zero exit (no traceback)."""


class MedmambaError(Exception):
    """A problem with the user's input or setup; the message names the file and the problem."""


class InputError(MedmambaError):
    """A bad input file (unreadable, wrong geometry, wrong content)."""
