"""Clips -> code rows through one `Engine`: the model call of the corpus tools
(`encode_dataset`'s actors and `encode_hf_dataset`)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from ..engine import Engine, activation_bytes_per_sample
from ..options import EncodeOptions
from ..reference.errors import InputError
from .columns import CODES_COLUMNS

# The engine names a refused clip by its position in one `encode_many` call, which means
# nothing to a corpus row (the callers name the row themselves).
_ENGINE_POSITION = re.compile(r"^clip \d+: ")


def corpus_engine(
    model, options: EncodeOptions, batch_size: int, max_batch_samples: int | None = None
) -> Engine:
    """The `Engine` that one actor (or one `datasets.map` process) keeps for all its clips,
    on the device the model is on.

    batch_size: clips per batch at most; max_batch_samples: padded 16 kHz samples per batch
    at most (clips x bucket length), handed to the engine as the activation memory that many
    samples take (None: the engine's default budget). Refused clips come back as errors
    (`errors="yield"`), so one bad clip never fails the others."""
    from ..model_input import resolve_model

    model = resolve_model(model)
    budget = (
        None
        if max_batch_samples is None
        else max_batch_samples * activation_bytes_per_sample(model)
    )
    return Engine(
        model,
        options=options,
        # The parameters' own device: "cuda" would not equal their "cuda:0", and the engine
        # would copy the model.
        device=next(model.parameters()).device,
        max_batch=batch_size,
        memory_budget=budget,
        errors="yield",
    )


def encode_clips(engine: Engine, clips: Sequence[torch.Tensor]) -> tuple[dict, list]:
    """Encode 16 kHz clips `[N_i]` with `engine` (in its own length buckets).

    Returns (`CODES_COLUMNS` as lists, one entry per clip, trimmed to the clip's own tokens,
    None for a clip that failed; per clip None or the exception that failed it). A clip the
    engine refuses (too short, NaN) fails alone; any other failure of a batch (say, out of
    memory) retries every clip alone, so only the clips that fail alone fail."""
    from ..codes_file import model_fingerprint

    try:
        results = list(engine.encode_many(clips))
    except Exception as e:  # noqa: BLE001 - isolated clip by clip below
        results = [e] if len(clips) == 1 else [_alone(engine, clip) for clip in clips]
    fingerprint = model_fingerprint(engine.model)
    columns = {key: [] for key in CODES_COLUMNS}
    errors = []
    for result in results:
        if isinstance(result, Exception):
            row = dict.fromkeys(CODES_COLUMNS)
            errors.append(
                InputError(_ENGINE_POSITION.sub("", str(result)))
                if isinstance(result, InputError)
                else result
            )
        else:
            row = _code_row(result, engine.options, fingerprint)
            errors.append(None)
        for key in CODES_COLUMNS:
            columns[key].append(row[key])
    return columns, errors


def _alone(engine: Engine, clip: torch.Tensor):
    """The engine's result for one clip, or the exception it raised."""
    try:
        (result,) = engine.encode_many([clip])
    except Exception as e:  # noqa: BLE001 - recorded as this clip's error
        return e
    return result


def _code_row(result, options: EncodeOptions, fingerprint: str) -> dict:
    """One clip's `encode_many` result (batch 1, trimmed to its tokens) -> `CODES_COLUMNS`."""
    lengths = result["token_lengths"][0]
    acoustic = result["acoustic_codes"]
    thresholds = result.get("thresholds")
    return {
        "audio_samples": int(result["audio_lengths"][0]),
        "num_frames": int(lengths.sum()),
        "total_frames": int(result["total_frames"][0]),
        "threshold": float(options.merging_threshold if thresholds is None else thresholds[0]),
        "token_lengths": lengths.tolist(),
        "semantic_codes": result["semantic_codes"][0, 0].tolist(),
        "acoustic_codes": None if acoustic is None else acoustic[0].tolist(),
        "model_fingerprint": fingerprint,
    }
