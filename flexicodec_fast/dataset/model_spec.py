"""The model a corpus job encodes with, as a JSON-able description that every actor loads on
its own (models are not shipped between processes)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..reference.errors import InputError


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


def load_model_spec(spec: dict, device: str = "auto"):
    """Build the model a normalised spec describes, on `device`."""
    from ..loading import prepare_model, resolve_device
    from ..tiny import random_tiny_model

    if "tiny_seed" in spec:
        return random_tiny_model(spec["tiny_seed"]).to(resolve_device(device))
    if spec.get("builtin"):
        return prepare_model(device=device)
    return prepare_model(spec["checkpoint"], spec["config"], spec["sensevoice"], device)
