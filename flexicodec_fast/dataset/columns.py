"""The code columns of a corpus row (part files and `encode_hf_dataset`), their arrow types,
and a row back to codes."""

from __future__ import annotations

from collections.abc import Mapping

import torch

# One row per clip in the part files (and the columns `hf_datasets.encode_hf_dataset` adds).
CODES_COLUMNS = (
    "audio_samples",  # input length at 16 kHz
    "num_frames",  # 12.5 Hz frames = sum(token_lengths)
    "total_frames",  # tokens after merging (G)
    "threshold",  # merging threshold used (the searched one with target_frame_rate)
    "token_lengths",  # list<int32> [G]
    "semantic_codes",  # list<int32> [G]
    "acoustic_codes",  # list<list<int32>> [nq-1][G], null when num_quantizers == 1
    "model_fingerprint",
)
PART_COLUMNS = ("index", "id", "source", *CODES_COLUMNS)
ERROR_COLUMNS = ("index", "id", "source", "stage", "error")


def codes_arrow_types() -> dict:
    """pyarrow types of `CODES_COLUMNS` (codes stored as int32: every codebook is far
    smaller than 2**31; `codes_from_row` gives back the official dtypes)."""
    import pyarrow as pa

    return {
        "audio_samples": pa.int64(),
        "num_frames": pa.int64(),
        "total_frames": pa.int64(),
        "threshold": pa.float64(),
        "token_lengths": pa.list_(pa.int32()),
        "semantic_codes": pa.list_(pa.int32()),
        "acoustic_codes": pa.list_(pa.list_(pa.int32())),
        "model_fingerprint": pa.string(),
    }


def row_schema():
    """What the encoder actors emit: part columns, the shard, and the error (null if none)."""
    import pyarrow as pa

    types = {
        "index": pa.int64(),
        "id": pa.string(),
        "source": pa.string(),
        **codes_arrow_types(),
        "shard": pa.int64(),
        "stage": pa.string(),
        "error": pa.string(),
    }
    return pa.schema(list(types.items()))


def codes_from_row(row: Mapping):
    """A part-file or `encode_hf_dataset` row -> `codes_file.Codes` of one item (batch 1), in
    the official dtypes, ready for `fast_decode` or `save_codes`."""
    from ..codes_file import Codes

    semantic = torch.tensor(row["semantic_codes"], dtype=torch.int32).view(1, 1, -1)
    acoustic = row["acoustic_codes"]
    if acoustic is not None:
        acoustic = torch.tensor(acoustic, dtype=torch.int64).view(1, -1, semantic.shape[-1])
    meta = {
        key: str(row[key])
        for key in ("id", "source", "model_fingerprint", "threshold")
        if row.get(key) is not None
    }
    return Codes(
        semantic,
        acoustic,
        torch.tensor(row["token_lengths"], dtype=torch.int64).view(1, -1),
        torch.tensor([row["total_frames"]], dtype=torch.int64),
        meta,
    )
