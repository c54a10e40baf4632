"""Hugging Face `datasets`: encode an audio `Dataset` with `Dataset.map(batched=True)`, and
read `encode_dataset`'s parquet shards back as a `Dataset`.

Both carry the same code columns (`dataset.columns.CODES_COLUMNS`: token_lengths,
semantic_codes, acoustic_codes as lists, trimmed to each clip's tokens, plus lengths,
threshold and model fingerprint), so `dataset.columns.codes_from_row` turns a row of either
into tensors for `fast_decode`. Needs the `[ray]` extra's `datasets` (not Ray itself).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import numpy as np

from .dataset.columns import CODES_COLUMNS
from .dataset.decode import decode_audio
from .dataset.encode import corpus_engine, encode_clips
from .dataset.errors import DatasetJobError, positive_int, require
from .dataset.shards import part_files
from .dataset.storage import read_bytes
from .jobs import to_model_audio
from .options import EncodeOptions
from .reference.errors import FlexiCodecError, InputError


def codes_features():
    """`datasets` features of the code columns (the same types as the part files)."""
    require("datasets")
    from datasets import List, Value

    return {
        "audio_samples": Value("int64"),
        "num_frames": Value("int64"),
        "total_frames": Value("int64"),
        "threshold": Value("float64"),
        "token_lengths": List(Value("int32")),
        "semantic_codes": List(Value("int32")),
        "acoustic_codes": List(List(Value("int32"))),
        "model_fingerprint": Value("string"),
    }


def _clip(value, sample_rate: int | None, mix_down: bool):
    """One audio cell -> 16 kHz mono float32 tensor `[N]`.

    Cells: `{"bytes", "path"}` (an `Audio` column, read undecoded and decoded here with
    libsndfile, like the file pipeline), `{"array", "sampling_rate"}` (samples `[N]` or
    `[C, N]`, the `datasets` layout), or a bare array with `sample_rate`.
    """
    if isinstance(value, Mapping) and "array" not in value:
        if value.get("bytes") is not None:
            return decode_audio(value["bytes"], mix_down)
        if value.get("path") is not None:
            return decode_audio(read_bytes(value["path"]), mix_down)
        raise FlexiCodecError(f"expected audio bytes, a path or an array, got {value!r}"[:200])
    if isinstance(value, Mapping):
        samples, rate = value["array"], value.get("sampling_rate")
    else:
        samples, rate = value, sample_rate
    if not isinstance(rate, int) or rate <= 0:
        raise FlexiCodecError(
            f"no sampling rate: expected {{'array', 'sampling_rate'}} cells or sample_rate=, "
            f"got {rate!r}"
        )
    wav = np.asarray(samples, dtype=np.float32)
    if wav.ndim not in (1, 2):
        raise FlexiCodecError(f"expected samples [N] or [C, N], got shape {list(wav.shape)}")
    return to_model_audio(wav[:, None] if wav.ndim == 1 else wav.T, rate, mix_down)


def encode_hf_dataset(
    dataset,
    model,
    *,
    audio_column: str = "audio",
    sample_rate: int | None = None,
    num_quantizers: int | None = 8,
    merging_threshold: float = 0.91,
    target_frame_rate: float | None = None,
    precision: str = "fp32",
    mix_down: bool = False,
    batch_size: int = 8,
    bucket_size: int | None = None,
    backend: str = "auto",
    **map_kwargs,
):
    """`dataset` with the code columns (`CODES_COLUMNS`) added, computed by an `Engine` in
    `Dataset.map(batched=True)`; the other columns are kept as they are. The codes are
    `fast_encode`'s for each clip alone, whatever it is batched with.

    audio_column: an `Audio` column (read undecoded, decoded here with libsndfile: no
        torchcodec needed, and the codes equal `encode-dataset`'s for the same files), a
        column of `{"array", "sampling_rate"}`, or of bare arrays with `sample_rate`.
    num_quantizers, merging_threshold, target_frame_rate, precision, mix_down: as for
        `fast_encode` (mix_down averages `[C, N]` samples or multi-channel files).
    batch_size: clips per engine batch at most; bucket_size: rows per `map` call, which the
        engine groups by length into those batches (default 8 x batch_size).
    map_kwargs: passed to `Dataset.map` (`num_proc`, `cache_file_name`, `desc`, ...). Each
        process makes one engine, at its first batch, on the model's device.
    A clip that cannot be encoded raises `InputError` naming its row.
    """
    datasets = require("datasets")
    from .codes_file import model_fingerprint
    from .model_input import resolve_model

    model = resolve_model(model)
    positive_int("batch_size", batch_size)
    bucket_size = positive_int(
        "bucket_size", 8 * batch_size if bucket_size is None else bucket_size
    )
    # Resolved once: one warning when asked for more quantizers than the model has, and one
    # cache fingerprint for every request that gives the same codes.
    options = EncodeOptions(
        num_quantizers=num_quantizers,
        merging_threshold=merging_threshold,
        target_frame_rate=target_frame_rate,
        precision=precision,
        backend=backend,
        mix_down=mix_down,
    ).for_model(model)
    if audio_column not in dataset.column_names:
        raise InputError(
            f"audio_column: {audio_column!r} is not a column of the dataset "
            f"({dataset.column_names})"
        )
    clash = sorted(set(CODES_COLUMNS) & set(dataset.column_names))
    if clash:
        raise InputError(f"dataset: already has code columns {clash}; remove them first")
    feature = dataset.features[audio_column]
    is_audio = isinstance(feature, datasets.Audio)
    if is_audio:
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))

    # Made at the first batch, in the process that runs it: `num_proc` workers each make their
    # own instead of receiving a pickled one.
    engines = []

    def encode(batch, indices):
        clips = []
        for value, row in zip(batch[audio_column], indices, strict=True):
            try:
                clips.append(_clip(value, sample_rate, mix_down))
            except (FlexiCodecError, OSError) as e:  # OSError: a path that cannot be read
                raise InputError(f"{audio_column}[{row}]: {e}") from e
        if not engines:
            engines.append(corpus_engine(model, options, batch_size))
        columns, errors = encode_clips(engines[0], clips)
        for error, row in zip(errors, indices, strict=True):
            if isinstance(error, InputError):
                raise InputError(f"{audio_column}[{row}]: {error}") from error
            if error is not None:
                raise error
        return columns

    features = dataset.features.copy()
    features.update(codes_features())
    # The transform closes over the model: hashing it for the cache fingerprint would be
    # slow, so the fingerprint is derived from what decides the codes instead.
    fingerprint = hashlib.sha256(
        json.dumps(
            [
                dataset._fingerprint,
                model_fingerprint(model),
                options.settings(),
                audio_column,
                sample_rate,
            ]
        ).encode()
    ).hexdigest()[:16]
    encoded = dataset.map(
        encode,
        batched=True,
        batch_size=bucket_size,
        with_indices=True,
        features=features,
        new_fingerprint=fingerprint,
        **map_kwargs,
    )
    return encoded.cast_column(audio_column, feature) if is_audio else encoded


def load_codes_dataset(out_dir, **from_parquet_kwargs):
    """The committed shards of an `encode_dataset` output folder (local or URI) as one
    `datasets.Dataset`, rows in corpus (index) order: index, id, source and the code columns.
    `from_parquet_kwargs` go to `Dataset.from_parquet` (`storage_options`, `keep_in_memory`,
    ...)."""
    datasets = require("datasets")
    files = part_files(str(out_dir))
    if not files:
        raise DatasetJobError(f"{out_dir}: no committed part-*.parquet shards")
    return datasets.Dataset.from_parquet(files, **from_parquet_kwargs)
