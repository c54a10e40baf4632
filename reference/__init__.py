"""Readable PyTorch FlexiCodec: the specification in code.

Every module here follows `spec/flexicodec.md` section by section; shapes are written in the
docstrings. Nothing here imports the fast path or the kernels.
"""

from .config import FlexiCodecConfig, SenseVoiceConfig
from .errors import CheckpointError, CodesFileError, FlexiCodecError, InputError

__all__ = [
    "CheckpointError",
    "CodesFileError",
    "FlexiCodecConfig",
    "FlexiCodecError",
    "InputError",
    "SenseVoiceConfig",
]
