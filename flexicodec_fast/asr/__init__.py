"""The small phoneme recogniser: FlexiCodec's frozen semantic encoder in miniature.

Training: `python -m flexicodec_fast.asr.train_recognizer --corpus DIR --out DIR --steps N`
(corpus from `scripts/make_corpus.py`).
"""

from .degradations import add_white_noise, band_limit
from .recognizer import (
    BLANK,
    DEFAULT_RECOGNIZER_CONFIG,
    PhonemeRecognizer,
    ctc_greedy_decode,
    edit_distance,
    identification_rate,
    load_recognizer,
    phoneme_error_rate,
    save_recognizer,
)

__all__ = [
    "BLANK",
    "DEFAULT_RECOGNIZER_CONFIG",
    "PhonemeRecognizer",
    "add_white_noise",
    "band_limit",
    "ctc_greedy_decode",
    "edit_distance",
    "identification_rate",
    "load_recognizer",
    "phoneme_error_rate",
    "save_recognizer",
]
