"""Errors raised for bad input.

Every message names the argument, what was expected and what was given, so a user can fix
the call without reading our code.
"""


class FlexiCodecError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(FlexiCodecError, ValueError):
    """An argument has the wrong type, rank, dtype, range or value."""


class CheckpointError(FlexiCodecError):
    """A checkpoint or config file is missing, unreadable, or does not fit the model."""


class CodesFileError(FlexiCodecError):
    """A codes file is malformed, tampered with, or made by another model."""


def describe(x) -> str:
    """A short description of a value for error messages."""
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is not None:
        return f"{type(x).__name__} of shape {list(shape)} and dtype {dtype}"
    return f"{type(x).__name__} {x!r}"[:200]
