"""flexicodec_fast: the fastest faithful implementation of FlexiCodec."""

from .reference.errors import CheckpointError, CodesFileError, FlexiCodecError, InputError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CodesFileError",
    "FlexiCodecError",
    "InputError",
    "__version__",
]
