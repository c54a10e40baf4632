"""Audio files -> 16 kHz mono clips: the CPU tasks that feed the encoder actors."""

from __future__ import annotations

import io

import numpy as np
import torch

from ..reference.errors import FlexiCodecError
from .plan import Plan
from .storage import read_bytes

# Files per decode task: small enough that decoding spreads over every CPU of the cluster
# even for a few shards, large enough that task overhead (milliseconds) stays negligible.
DECODE_TASK_FILES = 16


def decode_audio(data: bytes, mix_down: bool) -> torch.Tensor:
    """An encoded audio file's bytes (anything libsndfile reads) -> 16 kHz mono `[N]`."""
    import soundfile as sf

    try:
        wav, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        # Its own message names the in-memory buffer object, which says nothing.
        raise FlexiCodecError(f"not a readable audio file ({e.error_string})") from e
    from ..jobs import to_model_audio

    return to_model_audio(wav, sr, mix_down)


def decode_tasks(plan: Plan, shards: list[int]) -> list[dict]:
    """One item per chunk of a shard's files: index, shard, id and source (the listing itself
    travels inside the items). Building them on the driver is cheap even for millions of
    files, and each decode task takes one chunk."""
    chunks = []
    for shard in shards:
        r = plan.shard_range(shard)
        for start in range(r.start, r.stop, DECODE_TASK_FILES):
            index = list(range(start, min(r.stop, start + DECODE_TASK_FILES)))
            chunks.append(
                {
                    "index": index,
                    "shard": shard,
                    "id": [plan.ids[i] for i in index],
                    "source": [plan.uris[i] for i in index],
                }
            )
    return chunks


def decode_chunk(chunk: dict, mix_down: bool) -> dict:
    """Decode task: read and decode one chunk's files into `audio` (float32 `[N_i]` each); a
    failure becomes an error row (empty audio, `error` set) rather than failing the task."""
    (index,), (shard,), (ids,), (sources,) = (chunk[k] for k in ("index", "shard", "id", "source"))
    audio = np.empty(len(index), dtype=object)
    errors = []
    for n, uri in enumerate(sources):
        try:
            audio[n] = decode_audio(read_bytes(str(uri)), mix_down).numpy()
            errors.append("")
        except Exception as e:  # noqa: BLE001 - a bad file is recorded, the corpus goes on
            audio[n] = np.zeros(0, dtype=np.float32)
            errors.append(f"{type(e).__name__}: {e}")
    return {
        "index": np.asarray(index, dtype=np.int64),
        "shard": np.full(len(index), shard, dtype=np.int64),
        "id": np.asarray(ids, dtype=object),
        "source": np.asarray(sources, dtype=object),
        "audio": audio,
        "error": np.array(errors, dtype=object),
    }
