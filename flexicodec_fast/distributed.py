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
3. An actor pool (one model per actor, loaded once from a `model_spec`) sorts each bucket of
   decoded clips by length and runs `fast_encode` on batches of similar lengths, padded with
   `audio_lens`. `fast_encode` is batch-invariant, so every clip gets exactly its
   single-clip codes whatever it is batched with.
4. The driver collects the (small) code rows per shard and commits a shard once all its rows
   are in: rows sorted by index, written to `part-XXXXX.parquet.tmp`, then renamed. The
   shard's failed files go to `errors/part-XXXXX.parquet` first, so a committed shard always
   has its errors recorded.

Output folder: `_plan.json` (what the shards were made from: listing digest, shard size,
model spec and code options, model fingerprint), `part-*.parquet` (one row per clip, see
`CODES_COLUMNS`) and `errors/part-*.parquet` (index, id, source, stage, error). A rerun
skips committed shards and refuses an output folder made from another listing or with other
settings, so one folder never mixes codes of two configurations.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch

from .jobs import AUDIO_SUFFIXES
from .reference.errors import FlexiCodecError, InputError

log = logging.getLogger("flexicodec_fast.distributed")

PLAN_FILE = "_plan.json"
PLAN_FORMAT = "flexicodec-fast-dataset"
PLAN_VERSION = "1"
ERRORS_DIR = "errors"
SHARD_PATTERN = re.compile(r"^part-(\d{5,})\.parquet$")
MANIFEST_SUFFIXES = (".txt", ".lst", ".csv", ".tsv", ".jsonl", ".parquet")
# Files per decode task: small enough that decoding spreads over every CPU of the cluster
# even for a few shards, large enough that task overhead (milliseconds) stays negligible.
DECODE_TASK_FILES = 16

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


class DatasetJobError(FlexiCodecError):
    """A corpus job cannot run as asked: missing extra, unusable source or output folder,
    resources that cannot fit, or a rerun whose settings differ from the existing shards."""


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name}: expected an int >= 1, got {value!r}")
    return value


def _require(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise DatasetJobError(
            f"corpus encoding needs the [ray] extra ({module} is missing): "
            "pip install 'flexicodec-fast[ray]'"
        ) from e


# ------------------------------------------------------------------------ options and model


@dataclass(frozen=True)
class EncodeOptions:
    """Everything that decides the codes (recorded in the plan; a rerun must match)."""

    num_quantizers: int = 8
    merging_threshold: float = 0.91
    target_frame_rate: float | None = None
    precision: str = "fp32"
    mix_down: bool = False

    def __post_init__(self):
        from .fast import PRECISIONS

        nq = self.num_quantizers
        if isinstance(nq, bool) or not isinstance(nq, int) or nq < 1:
            raise InputError(f"num_quantizers: expected an int >= 1, got {nq!r}")
        if isinstance(self.merging_threshold, bool) or not isinstance(
            self.merging_threshold, (int, float)
        ):
            raise InputError(
                f"merging_threshold: expected a number, got {self.merging_threshold!r}"
            )
        rate = self.target_frame_rate
        if rate is not None and not (isinstance(rate, (int, float)) and 0 < rate <= 12.5):
            raise InputError(f"target_frame_rate: expected a number in (0, 12.5] Hz, got {rate!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision: expected one of {PRECISIONS}, got {self.precision!r}")


def normalize_model_spec(spec) -> dict:
    """The canonical, JSON-serialisable form of a model description that every actor can load
    on its own:

    - `"builtin"`: `prepare_model()`'s built-in model;
    - `{"tiny_seed": 0}`: `random_tiny_model(0)` (tests and trying the pipeline out);
    - `{"checkpoint": ..., "config": ..., "sensevoice": ...}` (sensevoice optional):
      `prepare_model` on those files. Local paths are made absolute; on a cluster they must
      exist at the same path on every node (a shared filesystem).
    The device is not part of the spec: it follows the resources each actor holds.
    """
    if spec == "builtin":
        return {"builtin": True}
    if isinstance(spec, Mapping):
        keys = set(spec)
        if keys == {"builtin"} and spec["builtin"] is True:
            return {"builtin": True}
        if keys == {"tiny_seed"}:
            seed = spec["tiny_seed"]
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise InputError(f"model_spec: tiny_seed must be an int, got {seed!r}")
            return {"tiny_seed": seed}
        if {"checkpoint", "config"} <= keys <= {"checkpoint", "config", "sensevoice"}:
            out = {}
            for key in ("checkpoint", "config", "sensevoice"):
                value = spec.get(key)
                if value is None and key == "sensevoice":
                    out[key] = None
                    continue
                if not isinstance(value, (str, os.PathLike)):
                    raise InputError(f"model_spec: {key} must be a path, got {value!r}")
                out[key] = os.path.abspath(os.fspath(value))
            return out
    raise InputError(
        "model_spec: expected 'builtin', {'tiny_seed': int} or "
        f"{{'checkpoint': path, 'config': path[, 'sensevoice': path]}}, got {spec!r}"
    )


def _check_num_quantizers(spec: dict, num_quantizers: int) -> None:
    """Reject too many quantizers on the driver when the spec's config is readable here: an
    actor that fails to start surfaces only after Ray's retries, wrapped in Ray's error."""
    from .reference.config import FlexiCodecConfig
    from .tiny import tiny_config

    if "tiny_seed" in spec:
        config = tiny_config()
    elif spec.get("config") and os.path.isfile(spec["config"]):
        config = FlexiCodecConfig.from_yaml(spec["config"])
    else:
        return
    if num_quantizers > config.n_codebooks + 1:
        raise InputError(
            f"num_quantizers: expected an int in [1, {config.n_codebooks + 1}] for this model "
            f"(1 semantic + {config.n_codebooks} acoustic), got {num_quantizers}"
        )


def load_model_spec(spec: dict, device: str = "auto"):
    """Build the model a normalised spec describes, on `device`."""
    from .loading import prepare_model, resolve_device
    from .tiny import random_tiny_model

    if "tiny_seed" in spec:
        return random_tiny_model(spec["tiny_seed"]).to(resolve_device(device))
    if spec.get("builtin"):
        return prepare_model(device=device)
    return prepare_model(spec["checkpoint"], spec["config"], spec["sensevoice"], device)


# ------------------------------------------------------------------------------ audio


def decode_audio(data: bytes, mix_down: bool) -> torch.Tensor:
    """An encoded audio file's bytes (anything libsndfile reads) -> 16 kHz mono `[N]`."""
    import soundfile as sf

    try:
        wav, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        # Its own message names the in-memory buffer object, which says nothing.
        raise FlexiCodecError(f"not a readable audio file ({e.error_string})") from e
    from .jobs import to_model_audio

    return to_model_audio(wav, sr, mix_down)


def _filesystem(uri: str):
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    scheme, rest = uri.split("://", 1)
    authority, _, key = rest.partition("/")
    fs, root = _remote_filesystem(scheme, authority)
    return fs, f"{root.rstrip('/')}/{key}"


@lru_cache(maxsize=8)
def _remote_filesystem(scheme: str, authority: str):
    """(filesystem, path of its root) once per bucket and process: creating a filesystem
    (credentials, region lookup) costs far more than reading a short clip."""
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(f"{scheme}://{authority}/")


def _read_bytes(uri: str) -> bytes:
    fs, path = _filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


# ------------------------------------------------------------------------------ listing


def list_source(source) -> list[tuple[str, str]]:
    """(id, uri) of every clip, sorted by id (ids are unique).

    source: a folder (recursive; id = path relative to it), an audio file, a manifest
    (`.txt`/`.lst`: one path per line; `.csv`/`.tsv`/`.jsonl`/`.parquet`: a `path` column and
    an optional `id` column; relative paths are relative to the manifest; id defaults to the
    path as written), or a list of files (id = the path as given). Local paths or URIs.
    """
    if isinstance(source, (list, tuple)):
        if not source:
            raise InputError("source: got an empty list of files")
        entries = [(os.fspath(p), _absolute(os.fspath(p))) for p in source]
    elif isinstance(source, (str, os.PathLike)):
        entries = _list_one(os.fspath(source))
    else:
        raise InputError(
            f"source: expected a folder, a manifest, an audio file or a list of files, "
            f"got {type(source).__name__}"
        )
    entries.sort()
    ids = [i for i, _ in entries]
    duplicates = sorted({i for i, j in zip(ids, ids[1:], strict=False) if i == j})
    if duplicates:
        raise InputError(f"source: ids must be unique, got duplicates {duplicates[:5]}")
    if not entries:
        raise InputError(f"source: no audio files ({', '.join(AUDIO_SUFFIXES)}) in {source!r}")
    return entries


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def _list_one(source: str) -> list[tuple[str, str]]:
    import pyarrow.fs as pafs

    fs, path = _filesystem(source)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"source: {source!r} does not exist")
    if info.type == pafs.FileType.Directory:
        root = _absolute(source)
        found = []
        for f in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
            if f.type == pafs.FileType.File and f.path.lower().endswith(AUDIO_SUFFIXES):
                rel = f.path[len(path.rstrip("/")) :].lstrip("/")
                found.append((rel, _join(root, rel)))
        return found
    lower = path.lower()
    if lower.endswith(MANIFEST_SUFFIXES):
        return _read_manifest(source, fs, path)
    if lower.endswith(AUDIO_SUFFIXES):
        return [(source, _absolute(source))]
    raise InputError(
        f"source: {source!r} is neither a folder, an audio file ({', '.join(AUDIO_SUFFIXES)}) "
        f"nor a manifest ({', '.join(MANIFEST_SUFFIXES)})"
    )


def _read_manifest(source: str, fs, path: str) -> list[tuple[str, str]]:
    import pyarrow as pa

    lower = path.lower()
    if lower.endswith(".parquet"):
        import pyarrow.parquet as pq

        rows = pq.read_table(path, filesystem=fs).to_pylist()
    else:
        with fs.open_input_stream(path) as f:
            text = f.read().decode("utf-8")
        if lower.endswith((".txt", ".lst")):
            rows = [
                {"path": line.strip()}
                for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            ]
        elif lower.endswith(".jsonl"):
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            import pyarrow.csv as pcsv

            delimiter = "\t" if lower.endswith(".tsv") else ","
            table = pcsv.read_csv(
                pa.BufferReader(text.encode()),
                parse_options=pcsv.ParseOptions(delimiter=delimiter),
                convert_options=pcsv.ConvertOptions(column_types={"path": pa.string()}),
            )
            rows = table.to_pylist()
    base = _absolute(source).rsplit("/", 1)[0]
    entries = []
    for n, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("path"), str):
            raise InputError(f"manifest {source!r}: entry {n} has no 'path' string: {row!r}")
        p = row["path"]
        uri = p if "://" in p or os.path.isabs(p) else _join(base, p)
        entries.append((p if row.get("id") is None else str(row["id"]), uri))
    return entries


@dataclass
class Plan:
    """The deterministic shard assignment of a sorted listing."""

    ids: list[str]
    uris: list[str]
    shard_size: int

    @property
    def num_shards(self) -> int:
        return -(-len(self.ids) // self.shard_size)

    def shard_range(self, shard: int) -> range:
        return range(shard * self.shard_size, min(len(self.ids), (shard + 1) * self.shard_size))

    def digest(self) -> str:
        """Of the ids only: the same corpus mounted elsewhere resumes."""
        h = hashlib.sha256()
        for i in self.ids:
            h.update(f"{i}\n".encode())
        return h.hexdigest()[:32]


def shard_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


# ------------------------------------------------------------------------ encoding rows


def length_buckets(
    lengths: Sequence[int], batch_size: int, max_batch_samples: int | None = None
) -> list[list[int]]:
    """Indices sorted by length, cut into batches of at most `batch_size` clips and (when set)
    at most `max_batch_samples` padded samples: similar lengths share a batch, so padding is
    small and long clips do not run out of memory."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, current = [], []
    for i in order:
        # Sorted ascending, so the clip being added is the longest of the batch so far.
        if current and (
            len(current) == batch_size
            or (max_batch_samples and lengths[i] * (len(current) + 1) > max_batch_samples)
        ):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def encode_clips(model, clips: list[torch.Tensor], options: EncodeOptions, backend="auto"):
    """`fast_encode` 16 kHz clips `[N_i]` in one padded batch; returns `CODES_COLUMNS` as
    lists, one entry per clip, each trimmed to the clip's own tokens."""
    from .codes_file import model_fingerprint
    from .fast import _resolve_model, fast_encode

    model = _resolve_model(model)
    lens = torch.tensor([c.numel() for c in clips])
    enc = fast_encode(
        torch.nn.utils.rnn.pad_sequence(clips, batch_first=True),
        model,
        num_quantizers=options.num_quantizers,
        merging_threshold=options.merging_threshold,
        audio_lens=lens,
        backend=backend,
        precision=options.precision,
        target_frame_rate=options.target_frame_rate,
    )
    total = enc["total_frames"].cpu().tolist()
    lengths = enc["token_lengths"].cpu().numpy()
    semantic = enc["semantic_codes"][:, 0].cpu().numpy()
    acoustic = None if enc["acoustic_codes"] is None else enc["acoustic_codes"].cpu().numpy()
    thresholds = enc.get("thresholds")
    thresholds = (
        [float(options.merging_threshold)] * len(clips)
        if thresholds is None
        else thresholds.tolist()
    )
    return {
        "audio_samples": lens.tolist(),
        "num_frames": lengths.sum(axis=1).tolist(),
        "total_frames": total,
        "threshold": thresholds,
        "token_lengths": [lengths[i, :g].tolist() for i, g in enumerate(total)],
        "semantic_codes": [semantic[i, :g].tolist() for i, g in enumerate(total)],
        "acoustic_codes": [
            None if acoustic is None else acoustic[i, :, :g].tolist() for i, g in enumerate(total)
        ],
        "model_fingerprint": [model_fingerprint(model)] * len(clips),
    }


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


def _row_schema():
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
    from .codes_file import Codes

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


# ------------------------------------------------------------------------ Ray stages


def _decode_chunk(chunk: dict, mix_down: bool) -> dict:
    """Decode task: read and decode one chunk's files; a failure becomes an error row (empty
    audio) rather than failing the task."""
    (index,), (shard,), (ids,), (sources,) = (chunk[k] for k in ("index", "shard", "id", "source"))
    audio = np.empty(len(index), dtype=object)
    errors = []
    for n, uri in enumerate(sources):
        try:
            audio[n] = decode_audio(_read_bytes(str(uri)), mix_down).numpy()
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


class _Encoder:
    """Actor: one model, loaded once; encodes buckets of decoded clips."""

    def __init__(
        self,
        model_spec: dict,
        options: dict,
        batch_size: int,
        max_batch_samples: int | None,
        threads: int,
        use_gpu: bool,
    ):
        torch.set_num_threads(threads)
        self.model = load_model_spec(model_spec, "cuda" if use_gpu else "cpu")
        self.options = EncodeOptions(**options)
        if self.options.num_quantizers > self.model.max_num_quantizers:
            raise InputError(
                f"num_quantizers: expected an int in [1, {self.model.max_num_quantizers}] for "
                f"this model, got {self.options.num_quantizers}"
            )
        self.batch_size = batch_size
        self.max_batch_samples = max_batch_samples

    def __call__(self, batch: dict):
        import pyarrow as pa

        n = len(batch["index"])
        columns = {key: [None] * n for key in CODES_COLUMNS}
        stage = ["decode" if batch["error"][i] else None for i in range(n)]
        errors = [batch["error"][i] or None for i in range(n)]
        good = [i for i in range(n) if not errors[i]]
        lengths = [len(batch["audio"][i]) for i in good]
        for bucket in length_buckets(lengths, self.batch_size, self.max_batch_samples):
            items = [good[j] for j in bucket]
            self._encode(batch, items, columns, stage, errors)
        return pa.Table.from_pydict(
            {
                "index": batch["index"].tolist(),
                "id": batch["id"].tolist(),
                "source": batch["source"].tolist(),
                **columns,
                "shard": batch["shard"].tolist(),
                "stage": stage,
                "error": errors,
            },
            schema=_row_schema(),
        )

    def _encode(self, batch, items, columns, stage, errors):
        # A copy: the batch is a read-only view into the object store.
        clips = [torch.from_numpy(np.array(batch["audio"][i], dtype=np.float32)) for i in items]
        try:
            result = encode_clips(self.model, clips, self.options)
        except Exception as e:  # noqa: BLE001 - isolate the failing clip(s) below
            if len(items) == 1:
                stage[items[0]], errors[items[0]] = "encode", f"{type(e).__name__}: {e}"
                return
            # A batch failure (one bad clip, or out of memory) is retried clip by clip, so
            # only the clips that fail alone are recorded as errors.
            for i in items:
                self._encode(batch, [i], columns, stage, errors)
            return
        for key, values in result.items():
            for i, value in zip(items, values, strict=True):
                columns[key][i] = value


# ------------------------------------------------------------------------ output folder


class _Output:
    """The output folder (local or URI): plan, atomic shard commits, errors, stale files."""

    def __init__(self, out: str):
        self.uri = out
        self.fs, self.base = _filesystem(out)

    def create(self) -> None:
        self.fs.create_dir(self.path(ERRORS_DIR), recursive=True)

    def path(self, *names: str) -> str:
        return "/".join([self.base.rstrip("/"), *names])

    def committed(self) -> set[int]:
        import pyarrow.fs as pafs

        done = set()
        for f in self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True)):
            m = SHARD_PATTERN.match(f.base_name)
            if m and f.type == pafs.FileType.File:
                done.add(int(m.group(1)))
        return done

    def remove_stale(self, pending: list[int]) -> None:
        """Drop temporaries of an interrupted run and the errors of shards to be redone (a
        shard's errors are only meaningful next to its committed part file)."""
        import pyarrow.fs as pafs

        for folder in (self.base, self.path(ERRORS_DIR)):
            for f in self.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
                name = f.base_name
                if name == PLAN_FILE + ".tmp" or (
                    name.startswith("part-") and name.endswith(".parquet.tmp")
                ):
                    self.fs.delete_file(f.path)
        for shard in pending:
            self._delete(self.path(ERRORS_DIR, shard_name(shard)))

    def exists(self, path: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _delete(self, path: str) -> None:
        if self.exists(path):
            self.fs.delete_file(path)

    def read_plan(self) -> dict | None:
        path = self.path(PLAN_FILE)
        if not self.exists(path):
            return None
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    def write_plan(self, plan: dict) -> None:
        self._atomic(self.path(PLAN_FILE), lambda f: f.write(json.dumps(plan, indent=2).encode()))

    def write_table(self, path: str, table) -> None:
        import pyarrow.parquet as pq

        self._atomic(path, lambda f: pq.write_table(table, f))

    def _atomic(self, path: str, write) -> None:
        tmp = path + ".tmp"
        with self.fs.open_output_stream(tmp) as f:
            write(f)
        # A rename on local and POSIX-like filesystems (atomic); object stores copy, and the
        # final object appears whole or not at all.
        self.fs.move(tmp, path)

    def commit(self, shard: int, rows, metadata: dict) -> tuple[int, int]:
        """Write a complete shard: errors first, then the part file (the commit point).
        Returns (clips encoded, clips failed)."""
        import pyarrow.compute as pc

        rows = rows.sort_by("index")
        failed = rows.filter(pc.is_valid(rows["error"]))
        good = rows.filter(pc.is_null(rows["error"])).select(list(PART_COLUMNS))
        errors_path = self.path(ERRORS_DIR, shard_name(shard))
        if failed.num_rows:
            self.write_table(errors_path, failed.select(list(ERROR_COLUMNS)))
        else:
            self._delete(errors_path)
        meta = {**metadata, "shard": shard}
        self.write_table(
            self.path(shard_name(shard)),
            good.replace_schema_metadata({k: str(v) for k, v in meta.items() if v is not None}),
        )
        return good.num_rows, failed.num_rows


def part_files(out: str) -> list[str]:
    """The committed part files of an output folder (local paths or URIs), in shard order."""
    output = _Output(out)
    prefix = out.rstrip("/") if "://" in out else output.base
    return [_join(prefix, shard_name(s)) for s in sorted(output.committed())]


def load_errors(out: str):
    """Every failed clip of an output folder as a pyarrow Table (index, id, source, stage,
    error), sorted by index."""
    pa = _require("pyarrow")
    import pyarrow.parquet as pq

    output = _Output(out)
    paths = [output.path(ERRORS_DIR, shard_name(s)) for s in sorted(output.committed())]
    tables = [pq.read_table(p, filesystem=output.fs) for p in paths if output.exists(p)]
    if not tables:
        schema = _row_schema()
        return pa.schema([schema.field(c) for c in ERROR_COLUMNS]).empty_table()
    return pa.concat_tables(tables).sort_by("index")


# ------------------------------------------------------------------------ the job


@dataclass
class DatasetReport:
    """What `encode_dataset` did. Throughput counts this run's clips only."""

    out: str
    shards: int
    shards_skipped: int
    shards_written: int
    files_encoded: int
    files_failed: int
    audio_seconds: float
    wall_seconds: float
    num_actors: int
    gpus_per_actor: float
    cpus_per_actor: float

    @property
    def realtime_factor(self) -> float:
        """Audio seconds encoded per wall second (higher is better)."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds else 0.0

    def summary(self) -> str:
        shards = (
            f"encode-dataset: {self.shards_written} shards written, {self.shards_skipped} "
            f"already done (skipped) of {self.shards}"
        )
        if not (self.files_encoded or self.files_failed):
            return shards
        return (
            f"{shards}; {self.files_encoded} clips encoded, {self.files_failed} failed; "
            f"{self.audio_seconds:.1f} s of audio in {self.wall_seconds:.1f} s "
            f"({self.realtime_factor:.1f}x real time) with {self.num_actors} actor(s)"
        )


def _check_plan(existing: dict | None, plan: dict, out: str) -> dict:
    if existing is None:
        return plan
    if existing.get("format") != PLAN_FORMAT:
        raise DatasetJobError(f"{out}: {PLAN_FILE} is not a {PLAN_FORMAT} plan")
    # The model spec is recorded but not compared: moved checkpoint files still resume, and
    # a different model is caught by its fingerprint before any shard is written.
    keys = ("format_version", "num_files", "files_digest", "shard_size", "options")
    differ = [k for k in keys if existing.get(k) != plan[k]]
    if differ:
        detail = "; ".join(f"{k}: {existing.get(k)!r} there, {plan[k]!r} now" for k in differ)
        raise DatasetJobError(
            f"{out} holds shards made from another listing or with other settings ({detail}); "
            "rerun with the same source and settings, or use a new output folder"
        )
    return {**plan, **{k: v for k, v in existing.items() if k == "model_fingerprint"}}


def _resources(
    ray, local: bool, num_actors, gpus_per_actor, cpus_per_actor, decode_cpus: float
) -> tuple[int, float, float]:
    """Fill in the actor pool's shape from the cluster and check that it can run."""
    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus > 0 else 0.0
    if num_actors is None:
        num_actors = max(1, int(gpus // gpus_per_actor)) if gpus_per_actor > 0 else 1
    if cpus_per_actor is None:
        # GPU actors only feed the GPU; CPU actors share what decoding leaves.
        cpus_per_actor = 1.0 if gpus_per_actor > 0 else max(0.1, (cpus - decode_cpus) / num_actors)
    if num_actors < 1 or gpus_per_actor < 0 or cpus_per_actor <= 0 or decode_cpus <= 0:
        raise InputError(
            f"expected num_actors >= 1, gpus_per_actor >= 0, cpus_per_actor > 0 and "
            f"decode_cpus > 0, got {num_actors}, {gpus_per_actor}, {cpus_per_actor}, "
            f"{decode_cpus}"
        )
    need_cpus = num_actors * cpus_per_actor + decode_cpus
    need_gpus = num_actors * gpus_per_actor
    if need_cpus > cpus + 1e-9 or need_gpus > gpus + 1e-9:
        message = (
            f"{num_actors} actor(s) x ({cpus_per_actor:g} CPU, {gpus_per_actor:g} GPU) plus "
            f"{decode_cpus:g} CPU for decoding need {need_cpus:g} CPU and {need_gpus:g} GPU; "
            f"the cluster has {cpus:g} CPU and {gpus:g} GPU"
        )
        if local:
            # A local cluster never grows: Ray would wait forever.
            raise DatasetJobError(
                message + "; lower num_actors, cpus_per_actor or decode_cpus, or give "
                "num_cpus (logical CPUs may exceed the cores)"
            )
        log.warning("%s; waiting for the autoscaler to add nodes", message)
    return num_actors, float(gpus_per_actor), float(cpus_per_actor)


def encode_dataset(
    source,
    output: str | os.PathLike,
    model_spec="builtin",
    *,
    num_quantizers: int = 8,
    merging_threshold: float = 0.91,
    target_frame_rate: float | None = None,
    precision: str = "fp32",
    mix_down: bool = False,
    shard_size: int = 1000,
    batch_size: int = 8,
    bucket_size: int | None = None,
    max_batch_seconds: float | None = None,
    num_actors: int | None = None,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float | None = None,
    decode_cpus: float = 1.0,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
) -> DatasetReport:
    """Encode a corpus with Ray Data into parquet shards under `output` (see the module
    docstring for the layout); resumable, per-file failures go to the errors table.

    source: folder, manifest, audio file or list of files (`list_source`); local or URI.
    output: folder, local or URI (`s3://...`); must be reachable from the driver.
    model_spec: see `normalize_model_spec`; each actor loads its own copy.
    num_quantizers, merging_threshold, target_frame_rate, precision, mix_down: as for
        `fast_encode` / `flexicodec-fast encode`; they (with the listing and `shard_size`)
        must stay the same across reruns into one output folder.
    shard_size: clips per part file.
    batch_size: clips per `fast_encode` call; bucket_size: clips an actor sorts by length
        at once (default 8 x batch_size); max_batch_seconds: cap on the padded audio of one
        call (batch size x longest clip), for corpora with long clips.
    num_actors, gpus_per_actor, cpus_per_actor: the encoder pool. Defaults: one actor per
        GPU with 1 CPU each when the cluster has GPUs; else one CPU actor holding the CPUs
        decoding leaves. An actor with GPUs runs on CUDA, else on CPU with
        max(1, int(cpus_per_actor)) torch threads.
    decode_cpus: CPUs reserved by each decode task.
    address, num_cpus: how to reach Ray when this process is not connected yet: `address`
        of an existing cluster (default: $RAY_ADDRESS, else a new local Ray with `num_cpus`
        logical CPUs). A connection made here is closed on return.
    """
    ray = _require("ray")
    _require("pyarrow")
    options = EncodeOptions(
        num_quantizers, merging_threshold, target_frame_rate, precision, mix_down
    )
    spec = normalize_model_spec(model_spec)
    _check_num_quantizers(spec, num_quantizers)
    positive_int("shard_size", shard_size)
    positive_int("batch_size", batch_size)
    bucket_size = positive_int(
        "bucket_size", 8 * batch_size if bucket_size is None else bucket_size
    )
    if max_batch_seconds is not None and not max_batch_seconds > 0:
        raise InputError(f"max_batch_seconds: expected a positive number, got {max_batch_seconds}")
    if num_cpus is not None and (address is not None or ray.is_initialized()):
        raise InputError("num_cpus: applies only to a new local Ray (no address, not connected)")

    out = os.fspath(output)
    listing = list_source(source)
    plan = Plan([i for i, _ in listing], [u for _, u in listing], shard_size)
    output_dir = _Output(out)
    output_dir.create()
    committed = output_dir.committed()
    record = _check_plan(
        # A plan without committed shards binds nothing (say, a first run that stopped on a
        # bad option): it is replaced.
        output_dir.read_plan() if committed else None,
        {
            "format": PLAN_FORMAT,
            "format_version": PLAN_VERSION,
            "num_files": len(plan.ids),
            "files_digest": plan.digest(),
            "shard_size": shard_size,
            "num_shards": plan.num_shards,
            "model_spec": spec,
            "options": asdict(options),
        },
        out,
    )
    output_dir.write_plan(record)
    done = committed & set(range(plan.num_shards))
    pending = [s for s in range(plan.num_shards) if s not in done]
    output_dir.remove_stale(pending)
    if not pending:
        # Nothing to do: no Ray start-up (seconds) for a finished folder.
        report = DatasetReport(out, plan.num_shards, len(done), 0, 0, 0, 0.0, 0.0, 0, 0.0, 0.0)
        log.info(report.summary())
        return report

    connected_here = not ray.is_initialized()
    if connected_here:
        ray.init(
            address=address,
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level=logging.INFO if progress else logging.WARNING,
        )
    try:
        local = connected_here and address is None and not os.environ.get("RAY_ADDRESS")
        if local and spec.get("checkpoint"):
            for key in ("checkpoint", "config", "sensevoice"):
                if spec[key] is not None and not os.path.exists(spec[key]):
                    raise DatasetJobError(f"model_spec: {key} {spec[key]!r} does not exist")
        shape = _resources(ray, local, num_actors, gpus_per_actor, cpus_per_actor, decode_cpus)
        report = DatasetReport(out, plan.num_shards, len(done), 0, 0, 0, 0.0, 0.0, *shape)
        _run(
            ray,
            plan,
            pending,
            output_dir,
            record,
            spec,
            options,
            report,
            batch_size=batch_size,
            bucket_size=bucket_size,
            max_batch_samples=None if max_batch_seconds is None else int(max_batch_seconds * 16000),
            decode_cpus=decode_cpus,
            progress=progress,
        )
    finally:
        if connected_here:
            ray.shutdown()
    log.info(report.summary())
    return report


def _run(ray, plan, pending, output_dir, record, spec, options, report, **kw) -> None:
    """Build and drain the Ray Data pipeline for the pending shards, committing each shard as
    soon as all its clips are in."""
    from tqdm import tqdm

    # One item per chunk of a shard's files (the listing itself travels inside the items):
    # building them on the driver is cheap even for millions of files, and each decode task
    # takes one chunk.
    chunks = []
    for shard in pending:
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
    total = sum(len(c["index"]) for c in chunks)
    context = ray.data.DataContext.get_current()
    bars = context.enable_progress_bars
    # Our bar counts clips and audio; Ray's per-operator bars would interleave with it.
    context.enable_progress_bars = False
    try:
        ds = ray.data.from_items(chunks)
        ds = ds.map_batches(
            _decode_chunk,
            fn_kwargs={"mix_down": options.mix_down},
            batch_size=1,
            num_cpus=kw["decode_cpus"],
        )
        # A separate operator between decoding and the actors: it hands each actor call one
        # bucket of clips, and keeps decoding in its own CPU tasks (Ray fuses a task stage into
        # a following actor stage whose resources match, which would serialise decoding with
        # the model inside the actors).
        ds = ds.repartition(target_num_rows_per_block=kw["bucket_size"])
        ds = ds.map_batches(
            _Encoder,
            fn_constructor_kwargs={
                "model_spec": spec,
                "options": asdict(options),
                "batch_size": kw["batch_size"],
                "max_batch_samples": kw["max_batch_samples"],
                "threads": max(1, int(report.cpus_per_actor)),
                "use_gpu": report.gpus_per_actor > 0,
            },
            batch_size=kw["bucket_size"],
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=report.num_actors),
            num_cpus=report.cpus_per_actor,
            num_gpus=report.gpus_per_actor or None,
        )
        collector = _ShardCollector(plan, pending, output_dir, record, options, report)
        with tqdm(total=total, unit="clip", disable=not kw["progress"], desc="encode") as bar:
            start = time.perf_counter()
            for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                bar.update(collector.add(table))
                report.wall_seconds = time.perf_counter() - start
                bar.set_postfix(
                    shards=f"{report.shards_skipped + report.shards_written}/{report.shards}",
                    rtf=f"{report.realtime_factor:.1f}x",
                    failed=report.files_failed,
                )
    finally:
        context.enable_progress_bars = bars
    if collector.buffers:
        raise DatasetJobError(
            f"Ray Data finished without every clip of shards {sorted(collector.buffers)[:10]}; "
            "rerun to redo them"
        )


class _ShardCollector:
    """Driver side: gathers the encoder rows of each pending shard and commits the shard once
    every one of its clips is in (rows are small: codes, not audio)."""

    def __init__(self, plan, pending, output_dir, record, options, report):
        from . import __version__

        self.expected = {s: len(plan.shard_range(s)) for s in pending}
        self.buffers: dict[int, list] = {s: [] for s in pending}
        self.seen: dict[int, set] = {s: set() for s in pending}
        self.output_dir, self.record, self.report = output_dir, record, report
        self.metadata = {
            "format": PLAN_FORMAT,
            "format_version": PLAN_VERSION,
            "sample_rate": 16000,
            "num_quantizers": options.num_quantizers,
            "package_version": __version__,
        }

    def add(self, table) -> int:
        """Take a batch of encoder rows; returns how many new clips it held."""
        import pyarrow as pa
        import pyarrow.compute as pc

        added = 0
        for shard in sorted(set(table["shard"].to_pylist())):
            part = table.filter(pc.equal(table["shard"], shard))
            # Ray may re-run a task after a worker failure; rows are deterministic, so a
            # repeated row is dropped.
            fresh = [i not in self.seen[shard] for i in part["index"].to_pylist()]
            part = part.filter(pa.array(fresh))
            self.seen[shard].update(part["index"].to_pylist())
            self.buffers[shard].append(part)
            added += part.num_rows
            if len(self.seen[shard]) == self.expected[shard]:
                self._commit(shard, pa.concat_tables(self.buffers.pop(shard)))
        return added

    def _commit(self, shard: int, rows) -> None:
        import pyarrow.compute as pc

        _check_fingerprint(rows, self.record, self.output_dir)
        self.metadata["model_fingerprint"] = self.record.get("model_fingerprint")
        good, failed = self.output_dir.commit(shard, rows, self.metadata)
        self.report.shards_written += 1
        self.report.files_encoded += good
        self.report.files_failed += failed
        self.report.audio_seconds += (pc.sum(rows["audio_samples"]).as_py() or 0) / 16000
        log.info("committed %s: %d clips, %d failed", shard_name(shard), good, failed)


def _check_fingerprint(rows, record: dict, output_dir: _Output) -> None:
    """Every clip of one output folder comes from one model: the first committed shard fixes
    the fingerprint in the plan, and a different one (say, nodes holding different checkpoint
    files under one path) stops the job before it is written."""
    found = {f for f in rows["model_fingerprint"].to_pylist() if f is not None}
    expected = record.get("model_fingerprint")
    if expected is None and len(found) == 1:
        record["model_fingerprint"] = expected = found.pop()
        output_dir.write_plan(record)
    if found - {expected}:
        raise DatasetJobError(
            f"{output_dir.uri}: clips were encoded by models {sorted(found)}, but this folder "
            f"holds codes of model {expected}; encode with that model (on a cluster: the same "
            "model files on every node) or into a new output folder"
        )


# ------------------------------------------------------------------------------ CLI


def add_encode_dataset_parser(subparsers) -> None:
    """Register `flexicodec-fast encode-dataset` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "encode-dataset",
        help="encode a corpus on a Ray cluster (local or --address) into parquet shards",
        description="Encode a folder, manifest or list of audio files with Ray Data into "
        "resumable parquet shards (one row per clip; failures in OUT/errors). Needs the "
        "[ray] extra.",
    )
    p.add_argument(
        "source",
        nargs="+",
        help="a folder (recursive), a manifest (.txt/.csv/.tsv/.jsonl/.parquet with 'path' "
        "and optional 'id'), or audio files; local paths or URIs (s3://, gs://, ...)",
    )
    p.add_argument("-o", "--out", required=True, help="output folder (local path or URI)")
    ray_group = p.add_argument_group("Ray cluster")
    ray_group.add_argument(
        "--address",
        help="existing cluster, e.g. 'auto' or 'ray://head:10001' (default: $RAY_ADDRESS, else "
        "start a local Ray)",
    )
    ray_group.add_argument("--num-cpus", type=int, help="logical CPUs of a new local Ray")
    ray_group.add_argument(
        "--num-actors", type=int, help="encoder actors (default: one per GPU, else 1)"
    )
    ray_group.add_argument(
        "--gpus-per-actor", type=float, help="default: 1 if the cluster has GPUs, else 0 (CPU)"
    )
    ray_group.add_argument(
        "--cpus-per-actor",
        type=float,
        help="default: 1 with GPUs, else the CPUs decoding leaves, shared among the actors",
    )
    ray_group.add_argument(
        "--decode-cpus", type=float, default=1.0, help="CPUs per decode task (default 1)"
    )
    batching = p.add_argument_group("batching and shards")
    batching.add_argument("--batch-size", type=int, default=8, help="clips per model call")
    batching.add_argument(
        "--bucket-size", type=int, help="clips sorted by length together (default 8x batch)"
    )
    batching.add_argument(
        "--max-batch-seconds", type=float, help="cap on padded audio per model call"
    )
    batching.add_argument("--shard-size", type=int, default=1000, help="clips per part file")
    codes = p.add_argument_group("codes")
    codes.add_argument("--num-quantizers", type=int, default=8)
    rate = codes.add_mutually_exclusive_group()
    rate.add_argument("--threshold", type=float, default=0.91)
    rate.add_argument("--target-frame-rate", type=float, help="Hz; per-clip threshold search")
    codes.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    codes.add_argument(
        "--mix-down", action="store_true", help="average the channels of multi-channel files"
    )
    model = p.add_argument_group("model (default: the built-in model)")
    model.add_argument("--checkpoint", help="FlexiCodec weights, same path on every node")
    model.add_argument("--config", help="official config YAML, same path on every node")
    model.add_argument("--sensevoice", help="SenseVoiceSmall folder, same path on every node")
    model.add_argument(
        "--tiny-seed",
        type=int,
        help="a RANDOMLY INITIALISED tiny model (seed N): for trying the pipeline out",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_encode_dataset)


def cmd_encode_dataset(args) -> int:
    if args.tiny_seed is not None:
        if args.checkpoint or args.config or args.sensevoice:
            raise InputError("--tiny-seed: not with --checkpoint/--config/--sensevoice")
        spec = {"tiny_seed": args.tiny_seed}
    elif args.checkpoint or args.config:
        spec = {"checkpoint": args.checkpoint, "config": args.config, "sensevoice": args.sensevoice}
    else:
        spec = "builtin"
    source = args.source[0] if len(args.source) == 1 else args.source
    if args.quiet:
        # Ray Data announces every execution plan at INFO; its loggers are set up when it is
        # first imported, so quieten them after that.
        _require("ray.data")
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.WARNING)
    report = encode_dataset(
        source,
        args.out,
        spec,
        num_quantizers=args.num_quantizers,
        merging_threshold=args.threshold,
        target_frame_rate=args.target_frame_rate,
        precision=args.precision,
        mix_down=args.mix_down,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        bucket_size=args.bucket_size,
        max_batch_seconds=args.max_batch_seconds,
        num_actors=args.num_actors,
        gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor,
        decode_cpus=args.decode_cpus,
        address=args.address,
        num_cpus=args.num_cpus,
        progress=not args.quiet,
    )
    print(report.summary())
    if report.files_failed:
        print(f"failed clips are listed in {_join(args.out, ERRORS_DIR)}/", file=sys.stderr)
    return 1 if report.files_failed else 0
