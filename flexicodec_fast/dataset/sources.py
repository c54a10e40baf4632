"""The listing a corpus job shards: (id, uri) of every clip of a folder, a manifest, an audio
file or a list of files, sorted by id."""

from __future__ import annotations

import json
import os

from ..jobs import AUDIO_SUFFIXES
from ..reference.errors import InputError
from .storage import absolute_uri, filesystem, join_uri

MANIFEST_SUFFIXES = (".txt", ".lst", ".csv", ".tsv", ".jsonl", ".parquet")


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
        entries = [(os.fspath(p), absolute_uri(os.fspath(p))) for p in source]
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


def _list_one(source: str) -> list[tuple[str, str]]:
    import pyarrow.fs as pafs

    fs, path = filesystem(source)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"source: {source!r} does not exist")
    if info.type == pafs.FileType.Directory:
        root = absolute_uri(source)
        found = []
        for f in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
            if f.type == pafs.FileType.File and f.path.lower().endswith(AUDIO_SUFFIXES):
                rel = f.path[len(path.rstrip("/")) :].lstrip("/")
                found.append((rel, join_uri(root, rel)))
        return found
    lower = path.lower()
    if lower.endswith(MANIFEST_SUFFIXES):
        return _read_manifest(source, fs, path)
    if lower.endswith(AUDIO_SUFFIXES):
        return [(source, absolute_uri(source))]
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
    base = absolute_uri(source).rsplit("/", 1)[0]
    entries = []
    for n, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("path"), str):
            raise InputError(f"manifest {source!r}: entry {n} has no 'path' string: {row!r}")
        p = row["path"]
        uri = p if "://" in p or os.path.isabs(p) else join_uri(base, p)
        entries.append((p if row.get("id") is None else str(row["id"]), uri))
    return entries
