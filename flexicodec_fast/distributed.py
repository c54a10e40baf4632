"""Corpus-scale encoding on Ray Data: `encode_dataset` and `flexicodec-fast encode-dataset`.

Needs the `[ray]` extra (`ray[data]`, `pyarrow`); everything here imports Ray and pyarrow
lazily, so the CLI and the rest of the package work without them.

Pipeline (one Ray Data job, streaming):

1. The driver lists the source (a folder, a list of files or a manifest; local paths or any
   URI pyarrow understands, such as `s3://` or `gs://`), sorts it by id and cuts it into
   fixed-size shards by index: shard `k` holds sorted items `[k*S, (k+1)*S)` and is written
   to `part-{k:05d}.parquet`. The assignment depends only on the listing and the shard size,
   so a rerun knows exactly which shards are missing.
2. CPU tasks read and decode the files of the missing shards and resample them to 16 kHz
   mono (`decode_audio`); a file that cannot be used becomes an error row, not a failure.
3. An actor pool (one model and one `Engine` per actor, made once from a `model_spec`)
   encodes the decoded clips: the engine groups each actor call's clips into length buckets
   and runs them as padded batches. Every stage masks per clip, so every clip gets exactly
   its single-clip `fast_encode` codes whatever it is batched with.
4. The driver collects the (small) code rows per shard and commits a shard once all its rows
   are in: rows sorted by index, written to `part-XXXXX.parquet.tmp`, then renamed. The
   shard's failed files go to `errors/part-XXXXX.parquet` first, so a committed shard always
   has its errors recorded.

Output folder: `_plan.json` (what the shards were made from: listing digest, shard size,
model spec and code options, model fingerprint), `part-*.parquet` (one row per clip, see
`CODES_COLUMNS`) and `errors/part-*.parquet` (index, id, source, stage, error). A rerun
skips committed shards and refuses an output folder made from another listing or with other
settings, so one folder never mixes codes of two configurations.

This module is the public entry; the code lives in `flexicodec_fast.dataset`, one module per
step (its docstring lists them).
"""

from .dataset.cli import add_encode_dataset_parser, cmd_encode_dataset
from .dataset.columns import (
    CODES_COLUMNS,
    ERROR_COLUMNS,
    PART_COLUMNS,
    codes_arrow_types,
    codes_from_row,
)
from .dataset.decode import decode_audio
from .dataset.encode import corpus_engine, encode_clips
from .dataset.errors import DatasetJobError
from .dataset.job import DatasetReport, encode_dataset
from .dataset.model_spec import load_model_spec, normalize_model_spec
from .dataset.plan import PLAN_FILE, Plan
from .dataset.shards import ERRORS_DIR, load_errors, part_files, shard_name
from .dataset.sources import list_source
from .options import EncodeOptions

__all__ = [
    "CODES_COLUMNS",
    "ERRORS_DIR",
    "ERROR_COLUMNS",
    "PART_COLUMNS",
    "PLAN_FILE",
    "DatasetJobError",
    "DatasetReport",
    "EncodeOptions",
    "Plan",
    "add_encode_dataset_parser",
    "cmd_encode_dataset",
    "codes_arrow_types",
    "codes_from_row",
    "corpus_engine",
    "decode_audio",
    "encode_clips",
    "encode_dataset",
    "list_source",
    "load_errors",
    "load_model_spec",
    "normalize_model_spec",
    "part_files",
    "shard_name",
]
