"""What the corpus job raises: its error type, the `[ray]` extra's imports and the checks of
its integer arguments."""

from __future__ import annotations

from ..reference.errors import FlexiCodecError, InputError


class DatasetJobError(FlexiCodecError):
    """A corpus job cannot run as asked: missing extra, unusable source or output folder,
    resources that cannot fit, or a rerun whose settings differ from the existing shards."""


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name}: expected an int >= 1, got {value!r}")
    return value


def require(module: str):
    """Import a module of the `[ray]` extra, or say how to install it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise DatasetJobError(
            f"corpus encoding needs the [ray] extra ({module} is missing): "
            "pip install 'flexicodec-fast[ray]'"
        ) from e
