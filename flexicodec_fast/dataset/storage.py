"""Local paths and URIs (`s3://`, `gs://`, anything pyarrow understands) through one pyarrow
filesystem interface."""

from __future__ import annotations

import os
from functools import lru_cache


def filesystem(uri: str):
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


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def join_uri(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def absolute_uri(path: str) -> str:
    """A URI as it is; a local path made absolute."""
    return path if "://" in path else os.path.abspath(path)
