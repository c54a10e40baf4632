"""flexicodec_fast: the fastest faithful implementation of FlexiCodec.

`prepare_model` loads official checkpoints into the readable reference model;
`fast_encode` / `fast_decode` run its weights through fused kernels; `Engine` runs them over
corpora in static-shape length buckets (CUDA graphs on a GPU).
"""

from .engine import Engine
from .fast import fast_decode, fast_encode
from .loading import prepare_model
from .options import EncodeOptions
from .reference.errors import CheckpointError, CodesFileError, FlexiCodecError, InputError
from .reference.result import EncodeResult

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CodesFileError",
    "EncodeOptions",
    "EncodeResult",
    "Engine",
    "FlexiCodecError",
    "InputError",
    "__version__",
    "fast_decode",
    "fast_encode",
    "prepare_model",
]
